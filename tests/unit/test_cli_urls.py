"""Brace patterns of shard lists on the command line as the README prints them: the shell strips the quotes,
__main__ quotes the pattern again for Hydra's override grammar. The README's command itself, run through
bash: tests/integration/test_readme_command.py."""

import pytest
from omegaconf import OmegaConf

from helpers.configs import compose_config
from pretrain_mm.__main__ import quote_url_patterns


def composed(*overrides):
    """The config Hydra composes from these command-line arguments after __main__'s quoting."""
    return compose_config(*quote_url_patterns(["+exp=clip", "data=wds", *overrides]))


@pytest.mark.parametrize(
    "arg, key, value",
    [
        # What the shell leaves of data.train.urls='/data/cc3m/{00000..00331}.tar':
        ("data.train.urls=/data/cc3m/{00000..00331}.tar", "data.train.urls", "/data/cc3m/{00000..00331}.tar"),
        # ... of 'data.train.urls="/d/{0..9}.tar"' (quoted for Hydra by the user): left as it is.
        ('data.train.urls="/d/{0..9}.tar"', "data.train.urls", "/d/{0..9}.tar"),
        ("data.train.urls='/d/{0..9}.tar'", "data.train.urls", "/d/{0..9}.tar"),
        ("data.val.urls=/d/{0..1}.tar,/e/{2..3}.tar", "data.val.urls", "/d/{0..1}.tar,/e/{2..3}.tar"),  # a comma list
        ("eval.wds.train_urls=/w/{0..1}.tar", "eval.wds.train_urls", "/w/{0..1}.tar"),
        ("++eval.wds.test_urls=/w/{2..3}.tar", "eval.wds.test_urls", "/w/{2..3}.tar"),
        # Quotes and backslashes in the value survive Hydra's escapes.
        ("data.train.urls=/d/it's/{0..1}.tar", "data.train.urls", "/d/it's/{0..1}.tar"),
        ('data.train.urls=/d/"q"/{0..1}.tar', "data.train.urls", '/d/"q"/{0..1}.tar'),
        ("data.train.urls=/d\\'x\\/{0..1}\\", "data.train.urls", "/d\\'x\\/{0..1}\\"),
        ("data.train.urls=/plain/0.tar", "data.train.urls", "/plain/0.tar"),
    ],
)
def test_a_brace_pattern_reaches_the_config_unchanged(arg, key, value):
    assert OmegaConf.select(composed(arg), key) == value


def test_only_shard_list_overrides_are_touched():
    args = ["-m", "data.tokenizer=/t/{x}.json", "~data.train.urls", "hydra.run.dir=/r/{a}", "data.train.urls=/d.tar"]
    assert quote_url_patterns(args) == args

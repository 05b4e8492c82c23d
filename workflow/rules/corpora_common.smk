# The profile's checks, which corpora the study reads (rnnsweep.data.corpora) and, for several, one module
# per corpus: a whole study of its own, workflow/study.smk with the study's profile but that corpus and its
# own folders.

from rnnsweep import config as study_config
from rnnsweep.data import DataError, corpora
from rnnsweep.layout import corpus_study, study_dir
from rnnsweep.select import size_problems

# The profile, checked before anything runs: its keys, types and ranges, the size of each stage, its corpora.
try:
    study_config.validate(study_config.coerce(config))
    CORPORA = corpora(config["corpus"])
except (study_config.ConfigError, DataError) as err:
    raise ValueError(str(err)) from None
TOO_LARGE = size_problems(config)
if TOO_LARGE:
    raise ValueError("\n".join(TOO_LARGE))

# A module per corpus: its name, the prefix of its rules, and its profile (the study's, with one corpus and
# that corpus's own folders).
CORPUS_MODULES = {
    f"{name}_": {
        **config,
        "corpus": entry,
        "study": corpus_study(config["study"], name),
    }
    for name, entry in CORPORA.items()
}
CORPUS_STUDIES = {
    name: study_dir(corpus_study(config["study"], name)) for name in CORPORA
}


def study_targets():
    """What `all` makes: the one corpus's study, or each corpus's and their comparison."""
    if len(CORPORA) == 1:
        return rules.study.input
    studies = [getattr(rules, f"{module}study").input for module in CORPUS_MODULES]
    return [*studies, *rules.corpora.output]


def corpus_file(name, stage, file):
    return f"{CORPUS_STUDIES[name]}/{stage}/{file}"

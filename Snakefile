# narvl: the whole pipeline, from raw data to the results tables (docs/workflow.md).
#
#   snakemake --cores all                                   # the embedded default, end to end
#   snakemake --cores all --config params_dir=params/real   # real data (edit the paths in params/real/ first)
#   snakemake --profile profiles/slurm                      # on a Slurm cluster (add --sdm apptainer for the container)
#
# Every step is `python -m narvl <subcommand>` (docs/design.md, Commands); the rules live in workflow/rules/.

from snakemake.utils import min_version

min_version("9.0")


configfile: "params/pipeline.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/decode.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/baselines.smk"
include: "workflow/rules/report.smk"


report: "workflow/report/workflow.rst"


rule all:
    """Target: the results tables, plots and gallery, and their comparison with the published reference."""
    default_target: True
    input:
        rules.report.output,
        rules.reproduction.output,


onsuccess:
    print_reproduction()

"""The variance study: a grid of training runs in one workdir, run one after another, and its report.

    layout    the names of a study workdir's files (study.json, runs/<name>/, done.json, report/)
    grid      the runs of a study config (RunSpec, study_grid), each run's training config, validation
    runner    run_study: runs the grid resumably with a progress bar, then writes the report
    report    the report package: loading a workdir, statistics, figures, the summary table, the page
"""

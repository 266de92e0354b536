"""`pad-bench`: the PAD benchmark runner, its baselines and its report.

`plan` lists the (class, method, setting) runs and splits them into shards; `runner` executes them
(resumable, one log per run, results written atomically by `store`); `methods` trains and evaluates
`omnipose-ad` through nerfstudio's ns-train / ns-eval paths and the baselines `patchcore` and
`nearest-view` through `evaluate`, the pipeline's protocol; `attributes` and `report` turn the stored
results into the paper-style tables, plots and attribute study; `cli` is the command line.
"""

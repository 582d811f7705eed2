"""What the tests, the benchmarks, the chaos checks and the studies share: faults on purpose
(`faults`), a served recoup in its own process (`served`), a load with faults for it (`load`),
reporting into docs (`report`), runs that are reused or resumed (`studies`), and the machinery of
fair tuning (`tuning`, `tuning_report`) and of the flagship (`flagship`, `flagship_report`). It runs
recoup's commands, so it sits above the app and below experiments, whose files are the recipes
that drive it; tests import it, never experiments' helpers."""

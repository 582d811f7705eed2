"""What the tests, the benchmarks and the chaos checks share: faults on purpose (`faults`), a served
recoup in its own process (`served`), a load with faults for it (`load`), and reporting into docs
(`report`). It runs recoup's commands, so it sits above the app and below experiments; tests
import it, never experiments."""

import gc

from .cli import main

code = main()
# Leave every object to the end of the process instead of a last garbage collection over TensorFlow's: 1.5 s at every
# exit of an audit's process here. Exit handlers still run (the Prefect server stops, logs are flushed).
gc.freeze()
raise SystemExit(code)

# The local orchestration stack (scripts/stack.py): Prefect server, MLflow server and one
# Prefect worker per GPU, all on 127.0.0.1; state, logs and PIDs under .stack/ (git-ignored).
# Settings from the environment: NIRGAN_PREFECT_PORT (4200), NIRGAN_MLFLOW_PORT (5000),
# NIRGAN_GPUS (e.g. 0,1; default: every GPU nvidia-smi lists, else one unpinned worker),
# NIRGAN_POOL_LIMIT (default: the number of workers), NIRGAN_STACK_DIR (.stack).
.PHONY: stack stack-down stack-status

stack: venv
	$(RUN) $(BIN)/python scripts/stack.py up

stack-down:
	$(BIN)/python scripts/stack.py down

stack-status:
	$(BIN)/python scripts/stack.py status

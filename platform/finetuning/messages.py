"""Messages clients see for fine-tuning, in one place."""

JOB_NOT_FOUND = "No such fine-tuning job: '{id}'."
DATASET_INVALID = (
    "Dataset '{id}' failed validation ({count} {problems}); fix the file and upload it again."
)
VALIDATION_LABELS = "The validation dataset has labels the training dataset does not: {labels}."
VALIDATION_LABEL_LOOKALIKE = (
    " {validation} looks like the training dataset's {training} but is other Unicode code "
    "points (shown escaped): write both files in one normal form (NFC)."
)
WARN_VALIDATION_IS_TRAINING = (
    "The validation dataset holds the same file as the training dataset: its accuracy and F1 "
    "measure how well the model remembers its examples, not how it does on new text."
)
WARN_VALIDATION_MISSES = (
    "The validation dataset has no examples of {labels}: their F1 is 0 and counts in macro_f1."
)
NOT_A_BASE_MODEL = "'{model}' is not a base model; fine-tune one of the base models."
HYPERPARAMETER_FOR_LORA = "'{name}' applies to method 'lora' only."
LORA_BATCH = (
    "A LoRA job's batch_size is at most {limit}: each row's activations are kept for the"
    " backward pass, and a bigger step does not fit a training worker's memory."
)
UNKNOWN_TARGET = "Unknown target module '{name}'; choose from {choices}."
TARGET_TWICE = "target_modules names a projection more than once."
FINE_TUNING_NOT_IN_PLAN = (
    "The {plan} plan does not include fine-tuning; change to a plan that does to train models."
)
LORA_NOT_IN_PLAN = (
    "The {plan} plan does not include LoRA fine-tuning; use method 'head' or change to a plan "
    "that includes LoRA."
)
MODEL_LIMIT = (
    "The {plan} plan allows {limit} fine-tuned models (counting jobs in progress); delete a "
    "model or change plan to train another."
)
TRAINED_TOKENS_OVER = (
    "This job would train about {estimate:,} tokens ({examples:,} training examples x {epochs}"
    " epochs, estimated from the dataset's text); a job may train at most {limit:,}{mode}."
    " Lower epochs or train on fewer examples."
)
TEST_MODE_DAILY = (
    "Test-mode keys may create {limit} fine-tuning jobs a day (UTC); test mode is not billed."
    " Retry after midnight UTC, or use a live key."
)
NOT_CANCELLABLE = (
    "The job has already finished ({status}); only jobs not yet finished can be cancelled."
)
SUFFIX = (
    "suffix may contain only letters, digits, '-' and '_', with at least one letter or digit"
    " (at most 40 characters)."
)

# Events (what a user watching the job reads).
EV_CREATED = "Fine-tuning job created; validating files."
EV_VALIDATED = "Files validated: {rows} training examples, {labels} labels. Job queued."
EV_CANCELLED = "Job cancelled."
EV_WAITING = (
    "Waiting for one of this account's jobs to finish: at most {limit} run or wait on the"
    " training queue at a time, so that other accounts' jobs are not held up behind them."
)
EV_DISPATCHED = "Sent to the training queue."
EV_RETRY = (
    "The worker running this job stopped responding (no heartbeat for {seconds:g} s); "
    "retrying from the start (attempt {attempt} of {max}). You are billed once."
)
EV_MESSAGE_LOST = (
    "This job was sent to the training queue, but no worker started it and it is no longer"
    " on the queue (looked for twice, {seconds:g} s apart); sending it again (attempt"
    " {attempt} of {max}). You are billed once."
)
EV_INT8_OFFERED = (
    "int8 variant {model} offered at the cheaper int8 tier: {delta:+.2f} points of validation "
    "accuracy against fp32 (at most {allowed:g} may be lost)."
)
EV_INT8_NOT_OFFERED = (
    "int8 variant not offered: it loses {loss:.2f} points of validation accuracy against "
    "fp32, and at most {allowed:g} may be lost."
)
INT8_VARIANT_DESCRIPTION = (
    "int8 variant of {parent}: the same fine-tuned model on int8 weights (the cheaper tier)."
)

# Job errors.
TENANT_SUSPENDED = (
    "The account was suspended while this job was {status}: it was stopped and is not billed. "
    "Create it again once the account is active."
)
WORKER_LOST = (
    "The worker running this job stopped responding {attempts} times (no heartbeat for "
    "{seconds:g} s); giving up."
)
# A worker's last word about a job (success or failure) that could not be stored.
REPORT_REFUSED = (
    "The training worker's report on this job could not be stored; the job was not billed."
    " Start a new job; if it fails the same way, contact support with this job's id."
)
# A worker's terminal event on a job the platform had ended otherwise (recorded as a log).
WORKER_ENDED_LATE = "The job was already {status} when its worker reported {kind}: {message}"
QUEUE_LOST = "The training queue is unreachable."
QUEUE_UNAVAILABLE = (
    "The training queue cannot be reached; nothing was created. Retry in a few seconds (with"
    " the same Idempotency-Key)."
)

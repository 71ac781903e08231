"""Messages clients see for classification, in one place."""

MODEL_NOT_FOUND = "The model '{model}' does not exist or you do not have access to it."
MODEL_NOT_READY = "The model '{model}' is not available for inference right now."
NEEDS_LABELS = (
    "The base model '{model}' needs 'labels' (zero-shot) or 'examples' (few-shot) to know "
    "which classes to choose from."
)
FINE_TUNED_NO_LABELS = (
    "'{param}' cannot be used with the fine-tuned model '{model}': it already knows its labels."
)
INPUT_TOO_LONG = "inputs[{index}] is {length} characters long; the limit is {limit}."
EMPTY_INPUT = (
    "inputs[{index}] has nothing to classify: it is empty, or only whitespace and invisible "
    "characters."
)
DUPLICATE_LABEL = "labels must be distinct; '{label}' appears more than once."
SAME_LABEL_TO_MODEL = (
    "labels[{index}] '{label}' is the same class to the model as labels[{first}] '{other}': "
    "it ignores case, accents and surrounding whitespace."
)
EXAMPLES_TOO_LARGE = (
    "The examples' texts are {length} characters long together; the limit is {limit}."
)
EXAMPLE_LABEL_UNKNOWN = "examples[{index}].label '{label}' is not one of the request's labels."
EXAMPLES_NEED_TWO_LABELS = "examples must cover at least two distinct labels."
EXAMPLES_TOO_MANY_LABELS = (
    "examples name {count} distinct labels; at most {limit}, as 'labels' may hold."
)
BASE_MODEL_NOT_DELETABLE = "'{model}' is a base model; only fine-tuned models can be deleted."
OVERLOADED = "The inference service is overloaded. Retry after a short wait."
WORKER_TIMEOUT = (
    "No inference worker answered within {timeout:g} seconds. Retry with the same "
    "Idempotency-Key to avoid being billed twice."
)
BROKER_DOWN = "The inference queue is unreachable. Retry after a short wait."
WORKER_FAILED = "The inference worker failed on this request. Retry after a short wait."
INVISIBLE_LABEL = (
    "A label needs a visible character: it is compared with each input as text, and this one "
    "has only whitespace or invisible characters."
)
EMPTY_EXAMPLE = (
    "examples[{index}].{field} has nothing visible: only whitespace and invisible characters."
)

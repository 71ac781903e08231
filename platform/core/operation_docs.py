"""What each public operation does, for the OpenAPI document's ``summary`` and
``description`` (the docs pages show them beside every operation). Kept here, one place to
read and keep true, and added to the document by ``operation_docs`` (a drf-spectacular
postprocessing hook); tests/platform/test_ops.py holds every /v1 operation to
having both, and this table to naming only operations that exist.

Conventions every operation shares (authentication, errors, idempotency, rate-limit
headers, lists) are in the document's own description, not repeated here."""

from __future__ import annotations

from typing import Any


def _list(order: str = "newest first") -> str:
    return (
        f" A cursor list, {order}: `limit` (1-100, default 20) and `starting_after` (the last"
        " id of the page before)."
    )


DOCS: dict[str, tuple[str, str]] = {
    "classify": (
        "Classify texts",
        "Labels 1 to 96 `inputs` (each at most 10,000 characters; longer is a 413) with a "
        "model. A base model (`minilm-l6`, `minilm-l6-int8`) needs `labels` (zero-shot: 2 to "
        "100 labels) or `examples` (few-shot: up to 256 labelled texts); a fine-tuned model "
        "(`ft:...`) needs neither and takes neither (400 `missing_labels`, or "
        "`invalid_parameter`, otherwise). With both, each example's label is one of `labels`; "
        "a label with examples is scored by their centroid, one without by its name. Labels "
        "scored by their names must differ to the model, which ignores case, accents and "
        "surrounding whitespace (`Coffee` and `coffee` are a 400 `duplicate_label`); "
        "`examples` without `labels` name at least 2 labels. Each result has the best `label`, its "
        "`score` and `scores`, a probability distribution over every label. `usage` says "
        "what the call is billed for: `inputs`, `tokens`, the worker's `compute_ms` and how "
        "many inputs came from the result cache (`cached`). Answers are cached per model "
        "version and normalised input, so a repeated input costs no compute. With an "
        "`Idempotency-Key`, a retry after a timeout is answered from the first attempt and "
        "billed once. 402 when the plan's monthly inputs are used up or the subscription is "
        "unpaid; 429 over the request rate or the concurrent-call cap; 503 when the workers "
        "are overloaded or did not answer in time (`Retry-After`), or the operator has "
        "taken the model out of service (`model_not_ready`); never billed.",
    ),
    "models_list": (
        "List models",
        "The base models every tenant can use and this tenant's own fine-tuned models (with "
        "their int8 variants), in the key's mode: a test-mode key sees the models its "
        "test-mode jobs made, a live key the live ones." + _list(),
    ),
    "models_retrieve": (
        "Retrieve a model",
        "A base model or one of this tenant's fine-tuned models; another tenant's is a 404.",
    ),
    "models_delete": (
        "Delete a fine-tuned model",
        "Deletes one of this tenant's fine-tuned models, and its int8 variant with it: "
        "classifications naming it are a 404 from the next request, and its file leaves the "
        "artifact store once no model serves it. Needs the `training` scope; a base model is "
        "a 403 (`base_model_not_deletable`).",
    ),
    "api_keys_list": (
        "List API keys",
        "This tenant's keys that are not revoked, in the calling key's mode (a test-mode key "
        "lists test-mode keys), never their secrets." + _list(),
    ),
    "api_keys_create": (
        "Create an API key",
        "Mints a key with the given `scopes` (`inference`, `training`, `billing`, `admin`; "
        "admin implies the others) and optional `expires_at`. The answer holds `secret` once: "
        'only its SHA-256 is stored, and a replayed creation answers `"secret": null`. A key '
        "that expires cannot mint one that outlives it (403 `expiry_escalation`; unsaid, the "
        "new key expires with it). A test-mode key mints test-mode keys.",
    ),
    "api_keys_retrieve": ("Retrieve an API key", "One of this tenant's keys, without its secret."),
    "api_keys_revoke": (
        "Revoke an API key",
        "Revokes the key at once: its next request, in any API process, is a 401. The "
        "tenant's last live, unexpired admin key cannot be revoked (409 `last_admin_key`: "
        "create another first).",
    ),
    "api_keys_rotate": (
        "Rotate an API key",
        "Issues a new secret for the key (shown once in the answer) and ends the old one, "
        "at once or after `grace_period_seconds`, during which both work. One grace period "
        "at a time: another rotation asking for one while one runs is 409 "
        "`rotation_in_progress`; one without ends every old secret at once.",
    ),
    "datasets_list": (
        "List datasets",
        "This tenant's uploaded datasets, with their validation status." + _list(),
    ),
    "datasets_create": (
        "Upload a dataset",
        'Uploads labelled texts as the multipart field `file`: JSONL lines `{"text": ..., '
        '"label": ...}` or CSV with a `text,label` header. The file is validated line by '
        "line as it is uploaded: `status` is `valid` (it can be trained on) or `invalid`, "
        "with `errors` naming each problem's line (the first 100; `error_count` counts them "
        "all) and `warnings` that do not block training. `rows` and `labels` (label to "
        "count) describe what a job would train on. 413 over the upload size limit; 409 "
        "`storage_limit_reached` when the tenant's datasets would exceed their storage.",
    ),
    "datasets_retrieve": ("Retrieve a dataset", "One of this tenant's datasets."),
    "datasets_delete": (
        "Delete a dataset",
        "Deletes the dataset and frees its storage. A dataset that an unfinished fine-tuning "
        "job trains or validates on is kept (409 `dataset_in_use`, naming the jobs).",
    ),
    "fine_tunes_list": (
        "List fine-tuning jobs",
        "This tenant's fine-tuning jobs in the key's mode." + _list(),
    ),
    "fine_tunes_create": (
        "Create a fine-tuning job",
        "Trains a model on a `valid` dataset: `method` `head` (a classification head on the "
        "frozen encoder, seconds) or `lora` (low-rank adapters in the encoder, minutes). "
        "Without a `validation_dataset` a share of the training rows is held out. The job "
        "goes `queued`, `running`, then `succeeded` (with `fine_tuned_model`, usable in "
        "`/v1/classify`, and validation `metrics`), `failed` (with `error`) or `cancelled`. "
        "Where int8 keeps accuracy within a point, an `ft:minilm-l6-int8:...` variant is "
        "registered too. The job is billed for its trained tokens when it succeeds, never "
        "otherwise. 402 on a plan without fine-tuning (or without LoRA).",
    ),
    "fine_tunes_retrieve": ("Retrieve a fine-tuning job", "One of this tenant's jobs."),
    "fine_tunes_events": (
        "List a job's events",
        "What happened to the job: its status changes (`started`, `succeeded`, `failed`, "
        "`cancelled`), each epoch's loss and validation accuracy (`progress`), and messages "
        "(`log`; `level` `warning` for one such as a model no better than always answering "
        "its commonest label)." + _list(),
    ),
    "fine_tunes_cancel": (
        "Cancel a fine-tuning job",
        "Stops a queued or running job; a cancelled job is never billed. A job that has "
        "already ended is 409 `job_not_cancellable`.",
    ),
    "usage": (
        "Usage and its amount",
        "The ledger summed between `start` and `end` (RFC 3339 date-times or dates, or unix "
        "seconds; by default from the start of the UTC month `end` falls in, to now), "
        "optionally grouped by `day`, `model` or `api_key`: `requests`, `inputs`, `tokens`, "
        "`compute_ms` and `amount` (minor units of `currency`, at the plan's prices per "
        "billing period, as the invoice prices them), plus their `total`. A call shows up "
        "within a couple of seconds of its answer. Test-mode keys see test-mode usage, "
        "never billed.",
    ),
    "plans_list": (
        "List plans",
        "The public plan catalogue: each plan's base fee (`amount` a "
        "month), included inputs, overage prices, fine-tuning price, limits and "
        "features." + _list("cheapest first"),
    ),
    "subscription_retrieve": (
        "Retrieve the subscription",
        "The tenant's plan (with its prices and limits), the subscription's status, the "
        "current billing period, and whether an unpaid invoice blocks billable calls "
        "(`payment_blocked`).",
    ),
    "subscription_update": (
        "Change plan",
        "Moves the tenant to `plan`. Between paid plans the change is prorated; `free` "
        "cancels the paid subscription, billing the period's usage on a final invoice. The "
        "new plan's limits apply from the next request. Asking for the current plan changes "
        "nothing. A declined card is 402; a test-mode key cannot change the plan (403 "
        "`livemode_required`); 503 when the payment provider cannot be reached.",
    ),
    # (their views describe them)
    "invoices_list": ("List invoices", ""),
    "invoices_upcoming": ("Preview the upcoming invoice", ""),
}


def operation_docs(result: dict[str, Any], **_: Any) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: each operation's summary and description from
    ``DOCS``, where the view's own ``extend_schema`` gave none, and the scope a key needs
    for it (``x-required-scope``, from ``core.schema``) said in its description."""
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            summary, description = DOCS.get(operation.get("operationId", ""), ("", ""))
            if summary and not operation.get("summary"):
                operation["summary"] = summary
            if description and not operation.get("description"):
                operation["description"] = description
            scope = operation.get("x-required-scope")
            if scope and f"`{scope}` scope" not in (operation.get("description") or ""):
                needs = f"Needs a key with the `{scope}` scope"
                needs += "." if scope == "admin" else " (an `admin` key has every scope)."
                described = operation.get("description")
                operation["description"] = f"{described}\n\n{needs}" if described else needs
    return result

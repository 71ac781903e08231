"""Building ClassifyRequests for the tests."""

from __future__ import annotations

import time
import uuid
from typing import Any

from workers.contract import CONTRACT_VERSION, ClassifyRequest, Example


def make_request(
    inputs: list[str],
    *,
    labels: list[str] | None = None,
    examples: list[Example] | None = None,
    **overrides: Any,
) -> ClassifyRequest:
    request: ClassifyRequest = {
        "v": CONTRACT_VERSION,
        "request_id": f"req_{uuid.uuid4().hex}",
        "tenant_id": "ten_test",
        "api_key_id": "key_test",
        "livemode": False,
        "model": "minilm-l6",
        "base_model": "minilm-l6",
        "inputs": inputs,
        "labels": labels,
        "examples": examples,
        "deadline": time.time() + 30,
    }
    request.update(overrides)  # type: ignore[typeddict-item]
    return request

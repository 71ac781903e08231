"""Run localstripe for one test session: ``python localstripe_server.py PORT STORE_PATH``.

localstripe listens on every interface and pickles its whole store to
/tmp/localstripe.pickle on each change, so two runs on one machine would share (and
corrupt) state. This wrapper binds 127.0.0.1 only and keeps the store in a per-run path.

NOTE: two compatibility shims, where localstripe 1.15 departs from Stripe:
- it accepts ``proration_behavior`` when a subscription is created but not when it is
  modified (the keyword reaches ``Subscription._update`` and the server answers 500). Real
  Stripe takes it on both and our code sends it on both; ``create_prorations`` maps to
  localstripe's only behaviour (an "Unused time" credit item).
- previewing the upcoming invoice attaches the customer's pending invoice items to the
  throw-away preview, so they vanish from every later invoice. Stripe's preview has no side
  effects; here a preview is built as a simulation, which leaves the items pending.
"""

from __future__ import annotations

import pickle
import sys
from typing import Any

from aiohttp import web
from localstripe import resources, server


def main() -> None:
    port, store_path = int(sys.argv[1]), sys.argv[2]

    def dump_to_disk(self: Any) -> None:
        with open(store_path, "wb") as f:
            pickle.dump(self, f, protocol=pickle.HIGHEST_PROTOCOL)

    def try_load_from_disk(self: Any) -> None:  # every run starts empty
        return None

    resources.Store.dump_to_disk = dump_to_disk  # type: ignore[method-assign]
    resources.Store.try_load_from_disk = try_load_from_disk  # type: ignore[method-assign]

    original_update = resources.Subscription._update

    def _update(self: Any, proration_behavior: str | None = None, **data: Any) -> Any:
        if proration_behavior not in (None, "create_prorations", "none"):
            raise resources.UserError(400, "Bad request")
        return original_update(self, **data)

    resources.Subscription._update = _update  # type: ignore[method-assign]
    original_init = resources.Invoice.__init__

    def __init__(self: Any, *args: Any, upcoming: bool = False, **kwargs: Any) -> None:
        if upcoming:
            kwargs["simulation"] = True
        original_init(self, *args, upcoming=upcoming, **kwargs)

    resources.Invoice.__init__ = __init__  # type: ignore[method-assign]
    web.run_app(server.app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()

"""Messages operators see when the plan catalogue refuses a change (admin form errors and
notices, the Stripe sync), and the pricing simulator's price-term errors, in one place."""

# Price terms (plans/terms.py): the admin's form errors and the simulator's.
AMOUNT_TYPE = "must be an integer or a decimal string of minor units"
AMOUNT_NOT_A_NUMBER = "{value} is not a number"
AMOUNT_NEGATIVE = "must be a finite amount of at least 0"
AMOUNT_TOO_LARGE = "must be below {limit} (at most {digits} digits before the decimal point)"
AMOUNT_TOO_PRECISE = "must have at most {places} digits after the decimal point"
COUNT = "must be a whole number of at least 0"
COUNT_TOO_LARGE = "must be at most {maximum}"
TIERS_SHAPE = 'must be an object like {"standard": [...]}'
TIERS_UNKNOWN = "unknown model tier {name} ({known})"
TIERS_EMPTY = "{where} must be a non-empty list of tiers"
TIERS_MISSING = (
    "prices {given} but not {missing}: past the included inputs that usage would be free; "
    'price every tier (a zero price, [{{"up_to": null, "unit_amount": "0"}}], if that is meant)'
)
UNCAPPED_UNPRICED = (
    "a plan without a hard cap needs overage prices for every tier ({tiers}): with none, "
    "every input past the included ones is free; give zero prices if that is meant, or a "
    "hard cap"
)
TIER_SHAPE = '{at} must be {{"up_to": ..., "unit_amount": ...}}'
TIER_LAST_BOUNDED = "{at}: the last tier's up_to must be null"
TIER_CEILING = "{at}.up_to must be a whole number above {floor} and at most {maximum}"
CACHED_BILLED = "must be true or false"
CURRENCY = "must be a currency Stripe charges in, lower case (usd, eur, ...)"

# The admin.
NEW_VERSION_SAVED = (
    "{old} is in use (subscribers, priced usage or a Stripe plan): its new terms are saved "
    "as {new}, now the current version."
)
MADE_CURRENT = (
    "{plan} is now the current version of {slug} (new subscribers get it), not {replaced}."
)
OLD_VERSION_TERMS = (
    "{plan} is not the current version of {slug}: its terms are kept as they were. Edit the "
    "current version to make new terms."
)
DELETE_REFUSED = (
    "{plan} cannot be deleted: {referrers}. A version is kept while anything refers to it, "
    "so that its id never names other terms."
)
REFERRED_BY_STRIPE = "Stripe plan {stripe_plan} charges its base fee"
REFERRED_BY_SUBSCRIPTIONS = "tenants are subscribed to it"
REFERRED_BY_PERIODS = "billing periods were priced on it"
REFERRED_BY_SPANS = "tenants were on it for part of a period (its share of the included inputs)"
REFERRED_BY_ROLLUPS = "usage rollups (margins) refer to it"
REFERRED_BY_LEDGER = "usage in the ledger was made on it"
FREE_NEEDS_CURRENT = (
    "The free plan must always have a current version: every tenant without a subscription "
    "is on it. Make another free version current instead."
)
FREE_CURRENT_NOT_DELETED = "{plan} is the current free version: " + FREE_NEEDS_CURRENT
STRIPE_SYNC_FAILED = "Stripe sync failed: {error}"
STRIPE_SYNCED = "Synced to Stripe: {plans}."
STRIPE_SYNCED_NONE = "none (free plans)"

# The Stripe sync (billing/stripe_sync.py), shown by the admin action and the command.
STRIPE_PLAN_MISMATCH = (
    "Stripe already has a plan {stripe_plan} for {plan}, but it charges {found} where {plan} "
    "charges {expected}: it was not reused. Delete or rename that Stripe plan (after moving "
    "anyone subscribed to it), then sync again."
)
UNBILLED_OVERAGE = (
    "a plan without a base fee is never billed (no Stripe subscription is made for it): its "
    "overage prices would show as owed and never be charged; give it a base fee, zero "
    "overage prices, or a hard cap no higher than its included inputs"
)
FREE_BASE_FEE = (
    "the free plan is never billed (its tenants have no Stripe subscription, whatever its "
    "terms): its base fee must be 0; make a paid plan of another slug instead"
)
UNBILLED_FINETUNE = (
    "a plan without a base fee is never billed (no Stripe subscription is made for it): "
    "give it a base fee, or make its fine-tuning free (0)"
)
MOVE_NOT_CURRENT = (
    "Nobody moved onto {plan}: it is not its plan's current version, and subscribers are moved"
    " onto a current version only (make it current first, or select the current one)."
)
MOVE_FREE = "Nobody to move onto {plan}: free's tenants follow its current version already."
MOVED = "Moved {moved} subscribers onto {plan} (each prorated in Stripe)."
MOVE_REFUSED = "Not moved, and left where they were, {count} subscribers: {refused}"
LIMIT_ZERO = (
    "At least 1: 0 refuses every request of every tenant on the plan (429). Leave the key"
    " limit empty for none."
)

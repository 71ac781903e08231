"""Messages clients see when a limit stops them."""

RATE_LIMITED = (
    "Rate limit of {limit} requests per minute exceeded. Retry after Retry-After seconds."
)
CONCURRENCY = (
    "Too many classification requests in flight at once (your plan allows {cap}). "
    "Retry when one finishes."
)
QUOTA = (
    "This period's quota of {cap} inputs on the {plan} plan is used up. Upgrade your plan "
    "or wait for the next period."
)
QUOTA_LEFT = (
    "This request's {inputs} inputs exceed the {left} left of this period's quota of {cap} "
    "inputs on the {plan} plan. Send fewer inputs, upgrade your plan or wait for the next "
    "period."
)
TEST_QUOTA = (
    "This month's test-mode allowance of {cap} inputs is used up. Test-mode calls are not "
    "billed and are counted apart from live ones, by calendar month (UTC); use a live key, "
    "or wait for the next month."
)
TEST_QUOTA_LEFT = (
    "This request's {inputs} inputs exceed the {left} left of this month's test-mode "
    "allowance of {cap} inputs. Test-mode calls are not billed and are counted apart from "
    "live ones, by calendar month (UTC); send fewer inputs, use a live key, or wait for "
    "the next month."
)
PAST_DUE = (
    "Your subscription is past due. Pay its open invoice to continue: GET /v1/invoices gives "
    "its payment page (hosted_invoice_url)."
)
CANCELED = "Your subscription is canceled. Choose a plan to continue."
HIT_UNCONFIRMED = (
    "The service could not confirm this call in time: it may have been answered from the "
    "cache and billed, once. Retry in a moment."
)
QUOTA_UNREADABLE = (
    "This period's usage could not be checked against your quota just now. Nothing was "
    "run or billed; retry in a moment."
)

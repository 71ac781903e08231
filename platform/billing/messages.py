"""Messages clients of the billing API see, in one place."""

UNKNOWN_PLAN = "No such plan: '{plan}'. See GET /v1/plans for the catalogue."
PLAN_NOT_SYNCED = "The plan '{plan}' is not available for purchase yet."
PAYMENT_DECLINED = "The payment method on file was declined ({reason})."
STRIPE_NOT_CONFIGURED = "Paid plans are not available: billing is not configured."
STRIPE_UNAVAILABLE = "The payment provider did not answer; try again shortly."
STRIPE_REFUSED = (
    "The payment provider refused the request ({code}); billing for this account needs the "
    "operator's attention, and retrying will meet the same answer until then."
)
WEBHOOK_NO_SIGNATURE = "Missing Stripe-Signature header."
WEBHOOK_BAD_SIGNATURE = "The signature does not match the payload, or it is too old."
WEBHOOK_BAD_PAYLOAD = "The payload is not a Stripe event."
WEBHOOK_NOT_CONFIGURED = "No webhook secret is configured: no signature can be verified."
PAST_DUE_CHANGE = (
    "The subscription is past due: pay its open invoice before moving to another paid plan "
    "(moving to free is allowed). GET /v1/invoices gives each invoice's payment page "
    "(hosted_invoice_url)."
)
OPEN_INVOICE_CHANGE = (
    "Invoice {invoice} is unpaid ({amount} due, in {currency} minor units): pay it before "
    "subscribing to a paid plan. GET /v1/invoices gives its payment page (hosted_invoice_url)."
)
CURRENCY_MISMATCH = (
    "This account has been billed in {current}, and keeps its charges in one currency (a "
    "billing period's, and /v1/usage's over any range); plan '{plan}' is billed in {target}: "
    "choose a plan in {current}."
)
CHANGE_IN_PROGRESS = (
    "Another change of this subscription is still in progress; retry when it has finished."
)
LOCK_STORE_DOWN = "The subscription could not be changed (Redis unreachable); retry shortly."
TEST_CHANGES_PLAN = (
    "A test-mode key cannot change the subscription: plan changes are billed. Use a live key."
)
# (Logged: the client reads STRIPE_UNAVAILABLE.)
STRIPE_BUSY = "Too many of this process's requests are waiting on the payment provider."

"""The order saga of orderflow's pipelines/src/order_saga.rs, ported for the Quix peer.

One order's state lives in Quix's per-key State (RocksDB), under the message key,
which is the order id on both inputs. The rules are the Rust saga's (see its module
docs), with two differences that the B3 preload never exercises:

- There is no payment-timeout timer: an order awaiting payment waits for good, and a
  result parked for an order that never comes stays parked.
- What the Rust saga sends to the dead-letter topic (a key that is not the order id,
  an empty request id, a second PlaceOrder for an order id, a result naming another
  payment id or contradicting the order, ...) is logged and skipped: the peer has no
  dead-letter topic.

`OrderSaga.process` is the stateful Quix callback: it takes one input (tagged
`COMMAND` or `RESULT`), reads and writes the order through `state` and returns the
outputs as `(topic, value)` pairs, in the order the Rust saga forwards them.
"""

import logging
import unicodedata
from typing import Any, Iterable, Mapping, Optional, Protocol

from ids import payment_id_for

logger = logging.getLogger("peer.saga")

COMMAND = "command"
RESULT = "result"

ORDERS_EVENTS = "orders.events"
PAYMENTS_REQUESTS = "payments.requests"

# The union branches of orders.commands and payments.requests, as fastavro names them.
PLACE_ORDER = "orderflow.PlaceOrder"
CANCEL_ORDER = "orderflow.CancelOrder"
PAYMENT_REQUESTED = "orderflow.PaymentRequested"
REFUND_REQUESTED = "orderflow.RefundRequested"

# Rejection reasons, in the order the rules are checked (order_saga.rs `reasons`).
BUYER_NOT_FOUND = "BUYER_NOT_FOUND"
NOT_A_BUYER = "NOT_A_BUYER"
SELLER_NOT_FOUND = "SELLER_NOT_FOUND"
NOT_A_SELLER = "NOT_A_SELLER"
NO_ITEMS = "NO_ITEMS"
BAD_QUANTITY = "BAD_QUANTITY"
BAD_PRICE = "BAD_PRICE"
UNKNOWN_CURRENCY = "UNKNOWN_CURRENCY"
TOTAL_OVERFLOW = "TOTAL_OVERFLOW"
PAYMENT_DECLINED = "PAYMENT_DECLINED"
BUYER_CANCELLED = "BUYER_CANCELLED"
LATE_APPROVAL = "LATE_APPROVAL"

# order_saga.rs DEFAULT_CURRENCIES (the topology configures none).
DEFAULT_CURRENCIES = frozenset(
    "AUD BRL CAD CHF CNY CZK DKK EUR GBP HKD HUF ILS INR "
    "JPY KRW MXN NOK NZD PLN SEK SGD TRY USD ZAR AED".split()
)

# Phases (order_saga.rs `Phase`, `Charge`); a cancelled order carries its charge.
REJECTED = "REJECTED"
AWAITING_PAYMENT = "AWAITING_PAYMENT"
PAID = "PAID"
REFUND_PENDING = "REFUND_PENDING"
REFUNDED = "REFUNDED"
CANCELLED_UNANSWERED = "CANCELLED:UNANSWERED"
CANCELLED_DECLINED = "CANCELLED:DECLINED"
CANCELLED_REFUND_REQUESTED = "CANCELLED:REFUND_REQUESTED"
CANCELLED_REFUNDED = "CANCELLED:REFUNDED"

_STATUS = {
    REJECTED: "REJECTED",
    AWAITING_PAYMENT: "ORDERED",
    PAID: "PAID",
    REFUND_PENDING: "PAID",
    REFUNDED: "REFUNDED",
    CANCELLED_UNANSWERED: "CANCELLED",
    CANCELLED_DECLINED: "CANCELLED",
    CANCELLED_REFUND_REQUESTED: "CANCELLED",
    CANCELLED_REFUNDED: "CANCELLED",
}

# State keys, both under the order id (Quix prefixes every state key with the
# message key): the order itself, and the results parked before it was placed.
ORDER_KEY = "order"
PARKED_KEY = "parked"

_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1

# Effects of a transition, applied in order (order_saga.rs `Effect`, less the timer).
_PUBLISH = "publish"
_REQUEST_PAYMENT = "request_payment"
_REQUEST_REFUND = "request_refund"


class Invalid(Exception):
    """An input the Rust saga would send to the dead-letter topic."""


class KeyValueState(Protocol):
    """What the saga needs of Quix's `State`."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def set(self, key: str, value: Any) -> None: ...

    def delete(self, key: str) -> None: ...


Output = tuple[str, Any]


def order_total(items: Iterable[Mapping[str, Any]]) -> Optional[int]:
    """The sum of quantity * unit_price in checked signed 64-bit arithmetic, or None."""
    total = 0
    for item in items:
        line = item["quantity"] * item["unit_price"]
        if not _I64_MIN <= line <= _I64_MAX:
            return None
        total += line
        if not _I64_MIN <= total <= _I64_MAX:
            return None
    return total


def _has_control(text: str) -> bool:
    return any(unicodedata.category(c) == "Cc" for c in text)


def _check_key(key: str, order_id: str, what: str) -> None:
    if key != order_id:
        raise Invalid(f"record key {key!r} is not the {what}'s order id {order_id!r}")


def _check_request_id(request_id: str) -> None:
    if not request_id or _has_control(request_id):
        raise Invalid(f"request id {request_id!r} is empty or has control characters")


def on_result(order: dict, outcome: str) -> list[tuple[str, Optional[str]]]:
    """Applies a payment outcome to `order` in place (order_saga.rs `on_result`) and
    returns its effects; raises Invalid for a result that contradicts the order."""
    phase = order["phase"]

    def enter(next_phase: str, reason: Optional[str]) -> None:
        order["phase"] = next_phase
        order["reason"] = reason

    if phase == REJECTED:
        raise Invalid(f"payment result for rejected order {order['order_id']!r}")
    if phase == AWAITING_PAYMENT and outcome == "APPROVED":
        enter(PAID, None)
        return [(_PUBLISH, None)]
    if phase == AWAITING_PAYMENT and outcome == "DECLINED":
        enter(CANCELLED_DECLINED, PAYMENT_DECLINED)
        return [(_PUBLISH, None)]
    if phase == REFUND_PENDING and outcome == "REFUNDED":
        enter(REFUNDED, BUYER_CANCELLED)
        return [(_PUBLISH, None)]
    if phase == CANCELLED_UNANSWERED and outcome == "APPROVED":
        order["phase"] = CANCELLED_REFUND_REQUESTED
        return [(_REQUEST_REFUND, LATE_APPROVAL)]
    if phase == CANCELLED_UNANSWERED and outcome == "DECLINED":
        order["phase"] = CANCELLED_DECLINED
        return []
    if phase == CANCELLED_REFUND_REQUESTED and outcome == "REFUNDED":
        order["phase"] = CANCELLED_REFUNDED
        return []
    approved_phases = (
        PAID,
        REFUND_PENDING,
        REFUNDED,
        CANCELLED_REFUND_REQUESTED,
        CANCELLED_REFUNDED,
    )
    if outcome == "APPROVED" and phase in approved_phases:
        return []  # applied already
    if outcome == "DECLINED" and phase == CANCELLED_DECLINED:
        return []
    if outcome == "REFUNDED" and phase in (REFUNDED, CANCELLED_REFUNDED):
        return []
    if outcome == "DECLINED":
        raise Invalid(f"DECLINED for order {order['order_id']!r}: the charge was approved")
    if outcome == "APPROVED":
        raise Invalid(f"APPROVED for order {order['order_id']!r}: the charge was declined")
    raise Invalid(f"REFUNDED for order {order['order_id']!r}: no refund was requested")


def on_cancel(order: dict, cancel: Mapping[str, Any]) -> list[tuple[str, Optional[str]]]:
    """Applies a CancelOrder to `order` in place (order_saga.rs `on_cancel`)."""
    if order["phase"] == AWAITING_PAYMENT:
        order["phase"] = CANCELLED_UNANSWERED
        order["reason"] = BUYER_CANCELLED
        return [(_PUBLISH, None)]
    if order["phase"] == PAID:
        order["phase"] = REFUND_PENDING
        reason = cancel.get("reason")
        if reason is None or not reason.strip():
            reason = BUYER_CANCELLED
        return [(_REQUEST_REFUND, reason)]
    return []


class OrderSaga:
    """The saga over a users table (user id → decoded `User`) and a currency list."""

    def __init__(
        self,
        users: Mapping[str, Mapping[str, Any]],
        currencies: frozenset[str] = DEFAULT_CURRENCIES,
    ):
        self._users = users
        self._currencies = currencies

    def process(
        self,
        tagged: tuple[str, Any],
        key: str,
        timestamp: int,
        _headers: Any,
        state: KeyValueState,
    ) -> list[Output]:
        """The Quix stateful callback (apply with metadata and expand)."""
        kind, value = tagged
        out: list[Output] = []
        try:
            if kind == COMMAND:
                name, body = value
                if name == PLACE_ORDER:
                    self._place(key, body, timestamp, state, out)
                elif name == CANCEL_ORDER:
                    self._cancel(key, body, timestamp, state, out)
                else:
                    raise Invalid(f"unknown command {name!r}")
            else:
                self._result(key, value, timestamp, state, out)
        except Invalid as e:
            logger.warning("input skipped (a dead letter in orderflow): %s", e)
            return []
        return out

    def _active(self, user_id: str) -> Optional[Mapping[str, Any]]:
        user = self._users.get(user_id)
        if user is None or user["status"] != "ACTIVE":
            return None
        return user

    def validate(self, place: Mapping[str, Any]) -> tuple[Optional[int], Optional[str]]:
        """(total, None) for a valid order, else (None, the first rule broken)."""
        buyer = self._active(place["buyer_id"])
        if buyer is None:
            return None, BUYER_NOT_FOUND
        if buyer["role"] != "BUYER":
            return None, NOT_A_BUYER
        seller = self._active(place["seller_id"])
        if seller is None:
            return None, SELLER_NOT_FOUND
        if seller["role"] != "SELLER":
            return None, NOT_A_SELLER
        items = place["items"]
        if not items:
            return None, NO_ITEMS
        for item in items:
            if item["quantity"] <= 0:
                return None, BAD_QUANTITY
            if item["unit_price"] < 0:
                return None, BAD_PRICE
        if place["currency"] not in self._currencies:
            return None, UNKNOWN_CURRENCY
        total = order_total(items)
        if total is None:
            return None, TOTAL_OVERFLOW
        return total, None

    def _place(self, key, place, timestamp, state, out) -> None:
        order_id = place["order_id"]
        _check_key(key, order_id, "PlaceOrder")
        _check_request_id(place["request_id"])
        if not order_id or _has_control(order_id):
            raise Invalid(f"order id {order_id!r} is empty or has control characters")
        existing = state.get(ORDER_KEY)
        if existing is not None:
            if place["request_id"] in existing["request_ids"]:
                return  # a retry: changes nothing
            raise Invalid(f"order {order_id!r} exists: a new request id cannot place it")
        total, reason = self.validate(place)
        if reason is None:
            phase = AWAITING_PAYMENT
            effects = [(_PUBLISH, None), (_REQUEST_PAYMENT, None)]
        else:
            phase = REJECTED
            total = order_total(place["items"]) or 0
            effects = [(_PUBLISH, None)]
        order = {
            "order_id": order_id,
            "buyer_id": place["buyer_id"],
            "seller_id": place["seller_id"],
            "items": [dict(i) for i in place["items"]],
            "currency": place["currency"],
            "total": total,
            "payment_id": payment_id_for(order_id),
            "phase": phase,
            "reason": reason,
            "version": 0,
            "request_ids": [place["request_id"]],
        }
        _apply(order, effects, timestamp, place["request_id"], out)
        self._apply_parked(order, timestamp, state, out)
        state.set(ORDER_KEY, order)

    def _apply_parked(self, order, timestamp, state, out) -> None:
        parked = state.get(PARKED_KEY)
        if parked is None:
            return
        state.delete(PARKED_KEY)
        for result in parked:
            before = dict(order)
            try:
                effects = on_result(order, result["outcome"])
            except Invalid as e:
                order.clear()
                order.update(before)
                logger.warning("a parked payment result is dropped: %s", e)
                continue
            _apply(order, effects, timestamp, None, out)

    def _cancel(self, key, cancel, timestamp, state, out) -> None:
        order_id = cancel["order_id"]
        _check_key(key, order_id, "CancelOrder")
        _check_request_id(cancel["request_id"])
        order = state.get(ORDER_KEY)
        if order is None:
            raise Invalid(f"CancelOrder for unknown order {order_id!r}")
        if cancel["requested_by"] != order["buyer_id"]:
            raise Invalid(f"CancelOrder of {order_id!r} by someone not its buyer")
        if cancel["request_id"] in order["request_ids"]:
            return
        order["request_ids"] = sorted([*order["request_ids"], cancel["request_id"]])
        effects = on_cancel(order, cancel)
        _apply(order, effects, timestamp, cancel["request_id"], out)
        state.set(ORDER_KEY, order)

    def _result(self, key, result, timestamp, state, out) -> None:
        order_id = result["order_id"]
        _check_key(key, order_id, "PaymentResult")
        order = state.get(ORDER_KEY)
        if order is None:
            self._park(result, state)
            return
        if result["payment_id"] != order["payment_id"]:
            raise Invalid(f"PaymentResult for {order_id!r} names another payment")
        before = dict(order)
        effects = on_result(order, result["outcome"])
        _apply(order, effects, timestamp, None, out)
        if order != before:
            state.set(ORDER_KEY, order)

    @staticmethod
    def _park(result, state) -> None:
        order_id = result["order_id"]
        if result["payment_id"] != payment_id_for(order_id):
            raise Invalid(f"PaymentResult for unknown order {order_id!r} names another payment")
        parked = state.get(PARKED_KEY) or []
        if any(p["outcome"] == result["outcome"] for p in parked):
            return
        parked.append({"order_id": order_id, "outcome": result["outcome"]})
        state.set(PARKED_KEY, parked)
        logger.info("payment result for %s parked until its order is placed", order_id)


def _apply(order, effects, timestamp, request_id, out) -> None:
    """Carries out `effects` for `order` (order_saga.rs `apply`, less the timer)."""
    for effect, reason in effects:
        if effect == _PUBLISH:
            order["version"] += 1
            out.append((ORDERS_EVENTS, _event(order, timestamp, request_id)))
        elif effect == _REQUEST_PAYMENT:
            request = {
                "payment_id": order["payment_id"],
                "order_id": order["order_id"],
                "buyer_id": order["buyer_id"],
                "amount": order["total"],
                "currency": order["currency"],
                "requested_at": timestamp,
            }
            out.append((PAYMENTS_REQUESTS, (PAYMENT_REQUESTED, request)))
        elif effect == _REQUEST_REFUND:
            request = {
                "payment_id": order["payment_id"],
                "order_id": order["order_id"],
                "buyer_id": order["buyer_id"],
                "amount": order["total"],
                "currency": order["currency"],
                "reason": reason,
                "requested_at": timestamp,
            }
            out.append((PAYMENTS_REQUESTS, (REFUND_REQUESTED, request)))


def _event(order: Mapping[str, Any], at: int, request_id: Optional[str]) -> dict:
    """The OrderEvent showing the order as it is now."""
    return {
        "order_id": order["order_id"],
        "buyer_id": order["buyer_id"],
        "seller_id": order["seller_id"],
        "status": _STATUS[order["phase"]],
        "total": order["total"],
        "currency": order["currency"],
        "reason": order["reason"],
        "version": order["version"],
        "at": at,
        "items": order["items"],
        "request_id": request_id,
    }

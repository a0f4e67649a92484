"""The saga port on the preload's inputs, over a real Quix RocksDB state partition."""

import pytest
from quixstreams.state.rocksdb import RocksDBStorePartition

from ids import payment_id_for
from saga import (
    COMMAND,
    ORDERS_EVENTS,
    PAYMENT_REQUESTED,
    PAYMENTS_REQUESTS,
    PLACE_ORDER,
    RESULT,
    OrderSaga,
    order_total,
)

USERS = {
    "b1": {"id": "b1", "role": "BUYER", "status": "ACTIVE"},
    "s1": {"id": "s1", "role": "SELLER", "status": "ACTIVE"},
    "gone": {"id": "gone", "role": "BUYER", "status": "DELETED"},
}


class Run:
    """Feeds inputs to the saga, one committed Quix state transaction per input."""

    def __init__(self, path):
        self.partition = RocksDBStorePartition(path=str(path))
        self.saga = OrderSaga(USERS)

    def feed(self, kind, value, key, ts):
        tx = self.partition.begin()
        out = self.saga.process((kind, value), key, ts, None, tx.as_state(prefix=key))
        tx.prepare()
        tx.flush()
        return out

    def place(self, order_id, ts=1000, request_id="r1", **over):
        place = {
            "request_id": request_id,
            "order_id": order_id,
            "buyer_id": "b1",
            "seller_id": "s1",
            "items": [{"product_id": "p", "quantity": 3, "unit_price": 250}],
            "currency": "EUR",
            "placed_at": 1,
        }
        place.update(over)
        return self.feed(COMMAND, (PLACE_ORDER, place), order_id, ts)

    def result(self, order_id, outcome="APPROVED", ts=2000, payment_id=None):
        result = {
            "payment_id": payment_id or payment_id_for(order_id),
            "order_id": order_id,
            "outcome": outcome,
            "reason": None,
            "at": 5,
            "amount": None,
            "currency": None,
        }
        return self.feed(RESULT, result, order_id, ts)


@pytest.fixture
def run(tmp_path):
    r = Run(tmp_path / "state")
    yield r
    r.partition.close()


def test_a_valid_order_is_ordered_then_paid(run):
    out = run.place("o1", ts=1000)
    assert [t for t, _ in out] == [ORDERS_EVENTS, PAYMENTS_REQUESTS]
    event = out[0][1]
    assert (event["status"], event["version"], event["at"]) == ("ORDERED", 1, 1000)
    assert (event["total"], event["request_id"], event["reason"]) == (750, "r1", None)
    assert event["items"] == [{"product_id": "p", "quantity": 3, "unit_price": 250}]
    name, request = out[1][1]
    assert name == PAYMENT_REQUESTED
    assert request["payment_id"] == payment_id_for("o1")
    assert (request["amount"], request["currency"], request["requested_at"]) == (750, "EUR", 1000)
    out = run.result("o1", ts=2000)
    assert len(out) == 1
    paid = out[0][1]
    assert (paid["status"], paid["version"], paid["at"], paid["request_id"]) == (
        "PAID",
        2,
        2000,
        None,
    )


def test_repeats_and_foreign_results_change_nothing(run):
    run.place("o1")
    assert run.place("o1") == []  # same request id: a retry
    assert run.place("o1", request_id="r2") == []  # new request id: a dead letter
    assert run.result("o1", payment_id="not-its-payment") == []
    assert len(run.result("o1")) == 1
    assert run.result("o1") == []  # applied already
    assert run.result("o1", outcome="DECLINED") == []  # contradicts: a dead letter


def test_a_result_before_its_order_is_parked_then_applied(run):
    assert run.result("o1", ts=500) == []
    assert run.result("o2", ts=500, payment_id="not-its-payment") == []
    out = run.place("o1", ts=900)
    assert [(t, v["status"] if t == ORDERS_EVENTS else v[0]) for t, v in out] == [
        (ORDERS_EVENTS, "ORDERED"),
        (PAYMENTS_REQUESTS, PAYMENT_REQUESTED),
        (ORDERS_EVENTS, "PAID"),
    ]
    assert (out[2][1]["version"], out[2][1]["at"]) == (2, 900)
    assert run.result("o1") == []  # the parked one was applied and forgotten
    # A wrongly named result was not parked: its order is only ORDERED.
    assert [v["status"] for t, v in run.place("o2") if t == ORDERS_EVENTS] == ["ORDERED"]


def test_declined_cancels(run):
    run.place("o1")
    (event,) = [v for _, v in run.result("o1", outcome="DECLINED")]
    assert (event["status"], event["reason"], event["version"]) == (
        "CANCELLED",
        "PAYMENT_DECLINED",
        2,
    )


@pytest.mark.parametrize(
    "over, reason",
    [
        ({"buyer_id": "nobody"}, "BUYER_NOT_FOUND"),
        ({"buyer_id": "gone"}, "BUYER_NOT_FOUND"),
        ({"buyer_id": "s1"}, "NOT_A_BUYER"),
        ({"seller_id": "b1"}, "NOT_A_SELLER"),
        ({"items": []}, "NO_ITEMS"),
        ({"items": [{"product_id": "p", "quantity": 0, "unit_price": 1}]}, "BAD_QUANTITY"),
        ({"items": [{"product_id": "p", "quantity": 1, "unit_price": -1}]}, "BAD_PRICE"),
        ({"currency": "eur"}, "UNKNOWN_CURRENCY"),
        ({"items": [{"product_id": "p", "quantity": 2, "unit_price": 2**62}]}, "TOTAL_OVERFLOW"),
    ],
)
def test_invalid_orders_are_rejected(run, over, reason):
    out = run.place("o1", **over)
    assert [t for t, _ in out] == [ORDERS_EVENTS]
    event = out[0][1]
    assert (event["status"], event["reason"], event["version"]) == ("REJECTED", reason, 1)
    assert run.result("o1") == []  # a rejected order asked for no payment


def test_totals_use_checked_arithmetic():
    def item(q, p):
        return {"quantity": q, "unit_price": p}

    i64_max = 2**63 - 1
    assert order_total([]) == 0
    assert order_total([item(3, 1999), item(1, 1)]) == 5998
    assert order_total([item(2, i64_max // 2 + 1)]) is None
    assert order_total([item(1, i64_max), item(1, 1)]) is None
    assert order_total([item(1, i64_max), item(1, 0)]) == i64_max

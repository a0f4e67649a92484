"""The port of ids.rs must give the ids the Rust code gives (its unit-test vectors)."""

from ids import derived_uuid, payment_id_for


def test_derived_ids_never_change():
    assert (
        derived_uuid("orderflow.user-id.v1", ["r1", "ann@example.com"])
        == "06b78dd5-5841-830c-a367-ffb082086273"
    )
    assert derived_uuid("orderflow.user-id.v1", ["", ""]) == "749eaf6c-3949-8624-93fa-8b7f82d5be61"


def test_domains_and_part_boundaries_matter():
    a = derived_uuid("d.v1", ["ab", "c"])
    assert a != derived_uuid("d.v1", ["a", "bc"])
    assert a != derived_uuid("e.v1", ["ab", "c"])
    assert a == derived_uuid("d.v1", ["ab", "c"])


def test_payment_ids_are_uuid_v8_of_the_order_id():
    pid = payment_id_for("o1")
    assert pid == derived_uuid("orderflow.payment-id.v1", ["o1"])
    assert pid != payment_id_for("o2")
    assert len(pid) == 36 and pid[14] == "8" and pid[19] in "89ab"

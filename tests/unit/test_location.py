"""The location service against RFC 3261 §10.3, its bounds and its memory budget."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from pbx.core.location import Binding, LocationService, UpdateResult, UpdateStatus

NOW = 1_000.0


def make_binding(**overrides: Any) -> Binding:
    values: dict[str, Any] = {
        "aor": "1001",
        "contact": "sip:1001@10.0.0.5:5070;transport=tcp",
        "expires_at": NOW + 3600,
        "q": None,
        "call_id": "a84b4c76e66710@pc33.example.org",
        "cseq": 1,
        "transport": "tcp",
        "source_host": "203.0.113.7",
        "source_port": 40112,
        "connection_id": None,
        "instance_id": None,
        "reg_id": None,
        "user_agent": "Yealink SIP-T46S 66.86.0.15",
        "updated_at": NOW,
    }
    values.update(overrides)
    return Binding(**values)


def ok(result: UpdateResult) -> UpdateResult:
    assert result.status is UpdateStatus.OK, result
    return result


def traced_growth(work: Callable[[], object]) -> int:
    """Bytes Python holds after `work` beyond what it held before (tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        work()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


# -- §10.3 step 7: add, refresh, remove -----------------------------------------------

def test_a_new_contact_is_added() -> None:
    location = LocationService()
    binding = make_binding()
    result = ok(location.update(binding, NOW))
    assert result.added == (binding,)
    assert result.refreshed == result.removed == ()
    assert location.bindings("1001", NOW) == [binding]
    assert len(location) == 1
    assert location.aors() == ["1001"]


def test_a_refresh_with_a_higher_cseq_replaces_the_binding() -> None:
    location = LocationService()
    first = make_binding()
    ok(location.update(first, NOW))
    later = make_binding(cseq=2, expires_at=NOW + 1800 + 60, updated_at=NOW + 1800)
    result = ok(location.update(later, NOW + 1800))
    assert result.refreshed == (later,)
    assert result.added == result.removed == ()
    assert location.bindings("1001", NOW + 1800) == [later]
    assert len(location) == 1


def test_a_contact_equal_by_rfc_3261_uri_rules_is_the_same_binding() -> None:
    """§19.1.4: host and scheme compare case-insensitively, parameter order does not count."""
    location = LocationService()
    first = make_binding(contact="sip:1001@Phone.Example.ORG:5070;transport=tcp;ob")
    ok(location.update(first, NOW))
    respelt = make_binding(contact="SIP:1001@phone.example.org:5070;ob;transport=TCP", cseq=2)
    result = ok(location.update(respelt, NOW))
    assert result.refreshed == (respelt,)
    # The old text no longer names a row, so the store must delete it.
    assert result.removed == (first,)
    assert location.bindings("1001", NOW) == [respelt]


def test_contacts_that_differ_in_a_must_match_parameter_are_distinct() -> None:
    """§19.1.4: transport, user, ttl, method and maddr must match when either side has them."""
    location = LocationService()
    ok(location.update(make_binding(contact="sip:1001@10.0.0.5:5070"), NOW))
    ok(location.update(make_binding(contact="sip:1001@10.0.0.5:5070;transport=tcp", cseq=2), NOW))
    ok(location.update(make_binding(contact="sip:1001@10.0.0.5:5071", cseq=3), NOW))
    assert len(location.bindings("1001", NOW)) == 3


def test_expires_zero_removes_the_binding() -> None:
    location = LocationService()
    binding = make_binding()
    ok(location.update(binding, NOW))
    result = ok(location.update(make_binding(cseq=2, expires_at=NOW + 10), NOW + 10))
    assert result.removed == (binding,)
    assert result.added == result.refreshed == ()
    assert location.bindings("1001", NOW + 10) == []
    assert len(location) == 0
    assert location.aors() == []


def test_expires_zero_for_an_unknown_contact_changes_nothing() -> None:
    location = LocationService()
    result = ok(location.update(make_binding(expires_at=NOW), NOW))
    assert result == UpdateResult(status=UpdateStatus.OK)
    assert len(location) == 0


def test_same_call_id_with_equal_or_lower_cseq_is_out_of_order() -> None:
    location = LocationService()
    current = make_binding(cseq=5)
    ok(location.update(current, NOW))
    for cseq in (5, 4):
        result = location.update(make_binding(cseq=cseq, expires_at=NOW + 60), NOW)
        assert result == UpdateResult(status=UpdateStatus.OUT_OF_ORDER)
        # A stale expires=0 must not unregister the phone either.
        result = location.update(make_binding(cseq=cseq, expires_at=NOW), NOW)
        assert result.status is UpdateStatus.OUT_OF_ORDER
    assert location.bindings("1001", NOW) == [current]


def test_a_different_call_id_is_accepted_whatever_its_cseq() -> None:
    """A rebooted phone starts a new Call-ID at CSeq 1 (§10.2.4)."""
    location = LocationService()
    ok(location.update(make_binding(cseq=900), NOW))
    rebooted = make_binding(call_id="new-call-id@pc33", cseq=1, updated_at=NOW + 5)
    result = ok(location.update(rebooted, NOW + 5))
    assert result.refreshed == (rebooted,)
    assert location.bindings("1001", NOW + 5) == [rebooted]


def test_one_out_of_order_contact_aborts_the_whole_register() -> None:
    location = LocationService()
    ok(location.update(make_binding(contact="sip:1001@10.0.0.5", cseq=7), NOW))
    fresh = make_binding(contact="sip:1001@10.0.0.6", cseq=7)
    stale = make_binding(contact="sip:1001@10.0.0.5", cseq=7)
    result = location.update_all([fresh, stale], NOW)
    assert result.status is UpdateStatus.OUT_OF_ORDER
    assert result.added == result.refreshed == result.removed == ()
    assert [b.contact for b in location.bindings("1001", NOW)] == ["sip:1001@10.0.0.5"]


def test_a_contact_listed_twice_in_one_register_is_not_out_of_order() -> None:
    location = LocationService()
    first = make_binding(expires_at=NOW + 60)
    second = make_binding(expires_at=NOW + 120)
    result = ok(location.update_all([first, second], NOW))
    assert result.added == (second,)
    assert location.bindings("1001", NOW) == [second]


def test_update_all_reports_each_kind_of_change() -> None:
    location = LocationService()
    kept = make_binding(contact="sip:1001@10.0.0.1")
    gone = make_binding(contact="sip:1001@10.0.0.2")
    ok(location.update_all([kept, gone], NOW))
    refreshed = make_binding(contact="sip:1001@10.0.0.1", cseq=2)
    removal = make_binding(contact="sip:1001@10.0.0.2", cseq=2, expires_at=NOW)
    added = make_binding(contact="sip:1001@10.0.0.3", cseq=2)
    result = ok(location.update_all([refreshed, removal, added], NOW))
    assert result.refreshed == (refreshed,)
    assert result.removed == (gone,)
    assert result.added == (added,)


def test_update_all_refuses_contacts_of_two_aors() -> None:
    location = LocationService()
    with pytest.raises(ValueError):
        location.update_all([make_binding(), make_binding(aor="1002")], NOW)


# -- §10.3 step 6: Contact: * --------------------------------------------------------

def test_star_removes_every_binding_of_the_aor() -> None:
    location = LocationService()
    desk = make_binding(contact="sip:1001@10.0.0.5")
    soft = make_binding(contact="sip:1001@10.0.0.9", call_id="other@laptop", cseq=40)
    ok(location.update(desk, NOW))
    ok(location.update(soft, NOW))
    ok(location.update(make_binding(aor="1002", contact="sip:1002@10.0.0.7"), NOW))
    result = ok(location.remove_all("1001", desk.call_id, 2, NOW))
    assert set(result.removed) == {desk, soft}
    assert location.bindings("1001", NOW) == []
    assert len(location) == 1
    assert location.aors() == ["1002"]


def test_star_with_a_stale_cseq_is_out_of_order_and_removes_nothing() -> None:
    location = LocationService()
    desk = make_binding(cseq=10)
    ok(location.update(desk, NOW))
    result = location.remove_all("1001", desk.call_id, 10, NOW)
    assert result.status is UpdateStatus.OUT_OF_ORDER
    assert location.bindings("1001", NOW) == [desk]


def test_star_for_an_aor_without_bindings_is_ok() -> None:
    assert LocationService().remove_all("1001", "x", 1, NOW) == UpdateResult(
        status=UpdateStatus.OK)


# -- ordering --------------------------------------------------------------------------

def test_bindings_come_by_q_descending_then_most_recent_first() -> None:
    location = LocationService()
    low = make_binding(contact="sip:1001@10.0.0.1", q=0.1, updated_at=NOW + 9)
    unset_old = make_binding(contact="sip:1001@10.0.0.2", q=None, updated_at=NOW + 1)
    high = make_binding(contact="sip:1001@10.0.0.3", q=0.9, updated_at=NOW + 2)
    unset_new = make_binding(contact="sip:1001@10.0.0.4", q=None, updated_at=NOW + 3)
    full = make_binding(contact="sip:1001@10.0.0.5", q=1.0, updated_at=NOW + 0)
    for binding in (low, unset_old, high, unset_new, full):
        ok(location.update(binding, NOW))
    # An absent q ranks as 1.0.
    assert location.bindings("1001", NOW + 10) == [unset_new, unset_old, full, high, low]


# -- expiry ----------------------------------------------------------------------------

def test_a_binding_expires_exactly_at_expires_at() -> None:
    location = LocationService()
    binding = make_binding(expires_at=NOW + 60)
    ok(location.update(binding, NOW))
    assert location.next_deadline() == NOW + 60
    assert location.bindings("1001", NOW + 59.999) == [binding]
    assert location.expire(NOW + 59.999) == []
    assert location.bindings("1001", NOW + 60) == []
    assert location.expire(NOW + 60) == [binding]
    assert len(location) == 0
    assert location.aors() == []
    assert location.expire(NOW + 1e6) == []


def test_a_refreshed_binding_is_not_expired_by_its_old_deadline() -> None:
    location = LocationService()
    ok(location.update(make_binding(expires_at=NOW + 60), NOW))
    refreshed = make_binding(cseq=2, expires_at=NOW + 90, updated_at=NOW + 30)
    ok(location.update(refreshed, NOW + 30))
    assert location.expire(NOW + 60) == []
    assert location.bindings("1001", NOW + 60) == [refreshed]
    assert location.expire(NOW + 90) == [refreshed]


def test_a_removed_binding_is_not_expired_again() -> None:
    location = LocationService()
    binding = make_binding(expires_at=NOW + 60)
    ok(location.update(binding, NOW))
    assert location.remove("1001", binding.contact) == binding
    assert location.expire(NOW + 60) == []


def test_expire_collects_in_deadline_order_and_honours_its_limit() -> None:
    location = LocationService()
    bindings = [
        make_binding(aor=f"{2000 + i}", contact=f"sip:{2000 + i}@10.0.0.{i}",
                     expires_at=NOW + 100 - i)
        for i in range(5)
    ]
    for binding in bindings:
        ok(location.update(binding, NOW))
    first = location.expire(NOW + 200, limit=2)
    assert first == [bindings[4], bindings[3]]
    assert location.next_deadline() == NOW + 98
    assert location.expire(NOW + 200) == [bindings[2], bindings[1], bindings[0]]
    assert location.next_deadline() is None


def test_an_expired_binding_is_replaced_without_the_cseq_check() -> None:
    """Once expired the binding no longer exists, so nothing is out of order."""
    location = LocationService()
    old = make_binding(cseq=5, expires_at=NOW + 60)
    ok(location.update(old, NOW))
    again = make_binding(cseq=1, expires_at=NOW + 200, updated_at=NOW + 100)
    result = ok(location.update(again, NOW + 100))
    assert result.added == (again,)
    assert location.bindings("1001", NOW + 100) == [again]
    assert location.expire(NOW + 100) == []


def test_an_update_collects_the_aors_expired_bindings() -> None:
    location = LocationService()
    old = make_binding(contact="sip:1001@10.0.0.1", expires_at=NOW + 60)
    ok(location.update(old, NOW))
    new = make_binding(contact="sip:1001@10.0.0.2", expires_at=NOW + 500, cseq=2)
    result = ok(location.update(new, NOW + 100))
    assert result.added == (new,)
    assert result.removed == (old,)
    assert len(location) == 1


def test_frequent_refreshes_do_not_grow_memory() -> None:
    """Each refresh leaves a stale expiry entry; they must be compacted, not hoarded."""
    location = LocationService()
    ok(location.update(make_binding(cseq=0), NOW))

    def refresh() -> None:
        for cseq in range(1, 20_001):
            location.update(make_binding(cseq=cseq, expires_at=NOW + 3600 + cseq), NOW)

    grown = traced_growth(refresh)
    # 20,000 uncollected entries would be well over 1 MB.
    assert grown < 200_000
    assert len(location) == 1


# -- removal by hand, reload, connections ----------------------------------------------

def test_remove_matches_by_uri_equality_and_reports_unknown_contacts() -> None:
    location = LocationService()
    binding = make_binding(contact="sip:1001@Host.example.org")
    ok(location.update(binding, NOW))
    assert location.remove("1001", "sip:1001@other.example.org") is None
    assert location.remove("1002", binding.contact) is None
    assert location.remove("1001", "sip:1001@host.EXAMPLE.org") == binding
    assert len(location) == 0
    assert location.aors() == []


def test_remove_aor_forgets_a_deleted_user() -> None:
    location = LocationService()
    ok(location.update(make_binding(contact="sip:1001@10.0.0.1"), NOW))
    ok(location.update(make_binding(contact="sip:1001@10.0.0.2"), NOW))
    ok(location.update(make_binding(aor="1002", contact="sip:1002@10.0.0.3"), NOW))
    assert len(location.remove_aor("1001")) == 2
    assert location.remove_aor("1001") == []
    assert location.aors() == ["1002"]
    assert len(location) == 1


def test_bindings_by_connection_follow_updates_and_removals() -> None:
    location = LocationService()
    desk = make_binding(contact="sip:1001@10.0.0.1", connection_id=7)
    soft = make_binding(contact="sip:1001@10.0.0.2", connection_id=7)
    other = make_binding(aor="1002", contact="sip:1002@10.0.0.3", connection_id=8)
    for binding in (desk, soft, other):
        ok(location.update(binding, NOW))
    assert set(location.bindings_by_connection(7)) == {desk, soft}
    assert location.bindings_by_connection(8) == [other]
    assert location.bindings_by_connection(9) == []
    # The desk phone reconnects: its refresh arrives over a new connection.
    moved = replace(desk, cseq=2, connection_id=9)
    ok(location.update(moved, NOW))
    assert location.bindings_by_connection(7) == [soft]
    assert location.bindings_by_connection(9) == [moved]
    location.remove("1001", soft.contact)
    assert location.bindings_by_connection(7) == []


def test_load_drops_expired_and_duplicate_bindings_and_clears_connection_ids() -> None:
    location = LocationService(max_contacts_per_aor=2)
    live = make_binding(contact="sip:1001@10.0.0.1", connection_id=4, updated_at=NOW - 10)
    older_duplicate = make_binding(contact="sip:1001@10.0.0.1", updated_at=NOW - 20)
    expired = make_binding(contact="sip:1001@10.0.0.2", expires_at=NOW)
    second = make_binding(contact="sip:1001@10.0.0.3", updated_at=NOW - 5)
    over_bound = make_binding(contact="sip:1001@10.0.0.4", updated_at=NOW - 30)
    dropped = location.load([older_duplicate, live, expired, second, over_bound], NOW)
    assert set(dropped) == {older_duplicate, expired, over_bound}
    assert location.bindings("1001", NOW) == [second, replace(live, connection_id=None)]
    assert location.bindings_by_connection(4) == []
    assert set(location.expire(NOW + 3600)) == {second, replace(live, connection_id=None)}
    assert len(location) == 0


# -- bounds ----------------------------------------------------------------------------

def test_too_many_contacts_for_one_aor_is_refused_and_changes_nothing() -> None:
    location = LocationService(max_contacts_per_aor=2)
    one = make_binding(contact="sip:1001@10.0.0.1")
    two = make_binding(contact="sip:1001@10.0.0.2")
    ok(location.update_all([one, two], NOW))
    result = location.update(make_binding(contact="sip:1001@10.0.0.3", cseq=2), NOW)
    assert result == UpdateResult(status=UpdateStatus.TOO_MANY_CONTACTS)
    assert set(location.bindings("1001", NOW)) == {one, two}
    # Refreshing at the limit is fine, and so is swapping one contact for another.
    ok(location.update(make_binding(contact="sip:1001@10.0.0.1", cseq=3), NOW))
    swap = [make_binding(contact="sip:1001@10.0.0.2", cseq=4, expires_at=NOW),
            make_binding(contact="sip:1001@10.0.0.3", cseq=4)]
    ok(location.update_all(swap, NOW))
    assert len(location.bindings("1001", NOW)) == 2


def test_expired_bindings_do_not_count_against_the_contact_limit() -> None:
    location = LocationService(max_contacts_per_aor=1)
    ok(location.update(make_binding(contact="sip:1001@10.0.0.1", expires_at=NOW + 60), NOW))
    later = make_binding(contact="sip:1001@10.0.0.2", expires_at=NOW + 200)
    assert ok(location.update(later, NOW + 60)).added == (later,)


def test_a_full_table_refuses_new_bindings_but_not_refreshes() -> None:
    location = LocationService(max_bindings=2)
    ok(location.update(make_binding(aor="1001", contact="sip:1001@10.0.0.1"), NOW))
    ok(location.update(make_binding(aor="1002", contact="sip:1002@10.0.0.2"), NOW))
    refused = location.update(make_binding(aor="1003", contact="sip:1003@10.0.0.3"), NOW)
    assert refused == UpdateResult(status=UpdateStatus.TABLE_FULL)
    assert location.bindings("1003", NOW) == []
    assert len(location) == 2
    ok(location.update(make_binding(aor="1001", contact="sip:1001@10.0.0.1", cseq=2), NOW))
    # Room comes back when a binding expires.
    location.expire(NOW + 3600)
    ok(location.update(make_binding(aor="1003", contact="sip:1003@10.0.0.3",
                                    expires_at=NOW + 7200), NOW + 3600))


def test_load_respects_the_table_bound() -> None:
    location = LocationService(max_bindings=2)
    bindings = [make_binding(aor=f"{1000 + i}", contact=f"sip:{1000 + i}@10.0.0.{i}",
                             updated_at=NOW - i) for i in range(3)]
    dropped = location.load(bindings, NOW)
    assert dropped == [bindings[2]]
    assert len(location) == 2


# -- values ----------------------------------------------------------------------------

def test_binding_normalises_the_transport_and_checks_q() -> None:
    assert make_binding(transport="TLS").transport == "tls"
    with pytest.raises(ValueError):
        make_binding(transport="sctp")
    with pytest.raises(ValueError):
        make_binding(q=1.5)


# -- memory ----------------------------------------------------------------------------

def test_a_binding_costs_well_under_one_and_a_half_kilobytes() -> None:
    """DESIGN.md budget: a binding about 1.5 KB. Worst case: one AOR per binding.

    Measured here: about 790 bytes per binding, everything the service holds
    included (the binding, its strings and numbers, its AOR's tuple and dict
    entry, its expiry wheel entry and its connection index entry).
    """
    count = 100_000
    user_agents = ["Yealink SIP-T46S 66.86.0.15", "Linphone/5.2.5 (belle-sip/5.2.4)",
                   "MicroSIP/3.21.3"]
    location = LocationService()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(count):
            aor = f"{100000 + i}"
            host = f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}"
            binding = Binding(
                aor=aor,
                contact=f"sip:{aor}@{host}:{5060 + i % 1000};transport=tcp;ob",
                expires_at=NOW + 3600 + i % 600,
                q=0.5,
                call_id=f"{i:032x}@{host}",
                cseq=1000 + i,
                transport="tcp",
                source_host=host,
                source_port=30000 + i % 30000,
                connection_id=i,
                instance_id=f"<urn:uuid:00000000-0000-1000-8000-{i:012x}>",
                reg_id=1,
                user_agent=str(user_agents[i % 3]),
                updated_at=NOW + i / 1000,
            )
            location.update(binding, NOW)
        del binding
        gc.collect()
        per_binding = (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()
    print(f"location service: {per_binding:.0f} bytes per binding")
    assert len(location) == count
    assert per_binding < 1500


def test_unregistering_and_registering_again_does_not_grow_memory() -> None:
    """Contact: * then a fresh REGISTER, in a loop: each cycle strands an expiry entry."""
    location = LocationService()
    ok(location.update(make_binding(cseq=0), NOW))

    def cycle() -> None:
        for cseq in range(1, 20_001, 2):
            ok(location.remove_all("1001", "a84b4c76e66710@pc33.example.org", cseq, NOW))
            ok(location.update(make_binding(cseq=cseq + 1), NOW))

    grown = traced_growth(cycle)
    assert grown < 200_000
    assert len(location) == 1


def test_a_phone_of_the_office_costs_the_location_service_under_440_bytes() -> None:
    """The common case, one phone per user over UDP: the binding, its own strings
    (contact, Call-ID) and numbers, its AOR entry and its expiry entry.

    The AOR string is the config's (shared, not counted); so is the source host
    of phones behind one NAT. Was about 500 bytes with a tuple per AOR and a
    heap entry of (expiry, AOR, contact) per binding; about 415 now, of which
    the Binding is 144, its two strings 160 and its two floats 48.
    """
    count = 20_000
    aors = [f"{100000 + i}" for i in range(count)]
    location = LocationService()

    def register_all() -> None:
        for i, aor in enumerate(aors):
            location.update(Binding(
                aor=aor, contact=f"sip:{aor}@192.168.1.20:5060", expires_at=NOW + 3600 + i / 7,
                call_id=f"{i:032x}@192.168.1.20", cseq=1, transport="udp",
                source_host="198.51.100.4", source_port=5060, updated_at=NOW + i / 1000,
            ), NOW)

    per_binding = traced_growth(register_all) / count
    print(f"location service: {per_binding:.0f} bytes per office phone")
    assert len(location) == count
    assert per_binding < 440


def test_expiry_within_one_second_is_exact() -> None:
    location = LocationService()
    early = make_binding(aor="1001", expires_at=NOW + 10.2)
    late = make_binding(aor="1002", expires_at=NOW + 10.8)
    ok(location.update(early, NOW))
    ok(location.update(late, NOW))
    deadline = location.next_deadline()
    assert deadline is not None and deadline <= NOW + 10.2  # early, never late
    assert location.expire(NOW + 10.5) == [early]
    assert location.bindings("1002", NOW + 10.5) == [late]
    assert location.expire(NOW + 10.5) == []
    assert location.expire(NOW + 10.8) == [late]
    assert len(location) == 0 and location.next_deadline() is None


def test_expire_with_a_limit_comes_back_for_the_rest_of_the_second() -> None:
    location = LocationService()
    bindings = [make_binding(aor=f"10{n:02d}", expires_at=NOW + 5 + n / 10) for n in range(5)]
    for binding in bindings:
        ok(location.update(binding, NOW))
    assert location.expire(NOW + 6, limit=2) == bindings[:2]
    assert location.expire(NOW + 6, limit=2) == bindings[2:4]
    assert location.expire(NOW + 6, limit=2) == bindings[4:]
    assert len(location) == 0


def test_a_refreshed_binding_does_not_expire_at_its_old_time() -> None:
    location = LocationService()
    first = make_binding(cseq=1, expires_at=NOW + 60)
    ok(location.update(first, NOW))
    refreshed = make_binding(cseq=2, expires_at=NOW + 3600)
    ok(location.update(refreshed, NOW + 30))
    assert location.expire(NOW + 61) == []
    assert location.bindings("1001", NOW + 61) == [refreshed]
    assert location.expire(NOW + 3600) == [refreshed]

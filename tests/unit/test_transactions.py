"""The transactional producer helper's pure parts: ids and what a failure means (#16)."""

from __future__ import annotations

from aiokafka.errors import (ConcurrentTransactions, InvalidProducerEpoch, KafkaConnectionError, ProducerFenced,
                             RequestTimedOutError, UnknownProducerId)

from connector.config import KafkaSettings
from connector.streams.transactions import needs_new_producer, transactional_id


def test_one_transactional_id_per_group_and_partition() -> None:
    k = KafkaSettings(group_id="g1", transactional_id_prefix="sms")
    assert transactional_id(k, 3) == "sms-g1-3"
    assert transactional_id(k, "poll-revio", group="inbound") == "sms-inbound-poll-revio"
    assert transactional_id(k, 3) != transactional_id(KafkaSettings(group_id="g2", transactional_id_prefix="sms"), 3)


def test_fenced_epoch_and_aiokafkas_state_assertion_need_a_new_producer() -> None:
    for exc in (ProducerFenced(), InvalidProducerEpoch(), UnknownProducerId(),
                AssertionError("Invalid state transition TransactionState.FATAL_ERROR -> IN_TRANSACTION")):
        assert needs_new_producer(exc), exc
    for exc in (ConcurrentTransactions(), KafkaConnectionError(), RequestTimedOutError(), ValueError()):
        assert not needs_new_producer(exc), exc


def test_exactly_once_settings_default_on() -> None:
    k = KafkaSettings()
    assert k.exactly_once and k.transactional_id_prefix and k.transaction_timeout_s == 60.0

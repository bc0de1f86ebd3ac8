"""The cell cipher: round trips, associated data, tampering in every byte, DEK lifecycle, shredding, failing closed."""

from __future__ import annotations

import datetime as dt
import pickle
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.errors import (
    CryptoError,
    DecryptionError,
    KeyAccessDeniedError,
    KeyProviderUnavailableError,
    StorageError,
)
from pipeline.lake import Lake
from storage_security.crypto.envelope import FORMAT_VERSION, KEY_ID_SIZE, CellCipher
from storage_security.keys.base import DataKey
from storage_security.keys.dek_store import DekStore
from storage_security.keys.keyring import LocalKeyring
from storage_security.keys.patient_keys import PatientKeyStore

KEK = "medguard-kek"
T, C = "patients", "name"
HEADER = 2 + KEY_ID_SIZE
NONCE_END = HEADER + 12


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(lake: Lake) -> DekStore:
    return DekStore(lake)


@pytest.fixture
def patients(lake: Lake) -> PatientKeyStore:
    return PatientKeyStore(lake)


@pytest.fixture
def cipher(keyring: LocalKeyring, store: DekStore, patients: PatientKeyStore) -> CellCipher:
    return CellCipher(keyring, store, patient_keys=patients)


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> tuple[CellCipher, bytes]:
    """One cipher and one cell of "Ada Lovelace" at patients.name[row-7], shared by the tampering tables."""
    root = tmp_path_factory.mktemp("sealed")
    ring = LocalKeyring.init(root / "keyring.json", LocalKeyring.generate_master_key())
    ring.ensure_key(KEK)
    cipher = CellCipher(ring, DekStore(root / "lake"))
    cell = cipher.encrypt_cell("Ada Lovelace", table=T, column=C, row_key="row-7")
    assert cell is not None
    return cipher, cell


def _fails(cipher: CellCipher, cell: bytes, *, table: str = T, column: str = C, row_key: str = "row-7") -> None:
    with pytest.raises(DecryptionError) as raised:
        cipher.decrypt_cell(cell, table=table, column=column, row_key=row_key)
    assert str(raised.value) == f"decryption failed for cell {table}.{column}[{row_key}]"


def _key_id(cell: bytes) -> bytes:
    return cell[2:HEADER]


# round trips ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "value_type"),
    [
        (pa.array(["Ada", None, "", "Zoë Ñúñez 李雷", "x" * 5000]), None),
        (pa.array([1, None, -(2**63), 2**63 - 1], pa.int64()), pa.int64()),
        (pa.array([0.1 + 0.2, None, -0.0, 1e300, 5e-324]), pa.float64()),
        (pa.array([1.5, None], pa.float32()), pa.float32()),
        (pa.array([True, False, None]), pa.bool_()),
        (pa.array([dt.date(1931, 5, 2), None, dt.date(2024, 2, 29)]), pa.date32()),
        (pa.array([dt.datetime(2024, 1, 2, 3, 4, 5, 123456), None], pa.timestamp("us", "UTC")),
         pa.timestamp("us", "UTC")),
        (pa.array([Decimal("12.30"), None], pa.decimal128(5, 2)), pa.decimal128(5, 2)),
        (pa.array([b"\x00\xff\x10", None, b""]), pa.binary()),
        (pa.array(["a", "b", None], pa.large_string()), pa.large_string()),
        (pa.array(["x", "y", "x", None]).dictionary_encode(), None),
        (pa.chunked_array([["a", None], ["c"]]), None),
        (["plain", None, "list"], None),
    ],
    ids=["strings", "int64", "float64", "float32", "bool", "date", "timestamp-utc", "decimal", "binary",
         "large-string", "dictionary", "chunked", "list"],
)
def test_when_a_column_is_encrypted_then_it_decrypts_to_the_same_values_and_nulls(
    cipher: CellCipher, values: pa.Array | list, value_type: pa.DataType | None
) -> None:
    count = len(values)
    row_keys = [f"r{i}" for i in range(count)]
    cells = cipher.encrypt_column(values, table=T, column=C, row_keys=row_keys)
    assert cells.type == pa.binary() and len(cells) == count

    back = cipher.decrypt_column(cells, table=T, column=C, row_keys=row_keys, value_type=value_type)

    expected = pa.chunked_array([values]).combine_chunks() if not isinstance(values, list) else pa.array(values)
    if pa.types.is_dictionary(expected.type):
        expected = expected.cast(expected.type.value_type)
    assert back.to_pylist() == expected.to_pylist()
    assert cells.is_null().to_pylist() == expected.is_null().to_pylist()


def test_when_nothing_or_only_nulls_are_encrypted_then_no_key_is_made(cipher: CellCipher, store: DekStore) -> None:
    assert cipher.encrypt_column(pa.array([], pa.string()), table=T, column=C, row_keys=[]).to_pylist() == []
    assert cipher.encrypt_column([None, None], table=T, column=C, row_keys=[1, 2]).to_pylist() == [None, None]
    assert cipher.decrypt_column(pa.nulls(2), table=T, column=C, row_keys=[1, 2]).to_pylist() == [None, None]
    assert store.records() == []


def test_when_the_same_value_is_encrypted_twice_then_cells_differ(cipher: CellCipher) -> None:
    cells = cipher.encrypt_column(["same", "same"], table=T, column=C, row_keys=[1, 1]).to_pylist()
    assert cells[0] != cells[1] and cells[0][HEADER:NONCE_END] != cells[1][HEADER:NONCE_END]


def test_when_a_cell_is_written_then_its_layout_is_the_documented_one(sealed: tuple[CellCipher, bytes]) -> None:
    _, cell = sealed
    assert cell[0] == FORMAT_VERSION and cell[1] == KEY_ID_SIZE
    assert len(cell) == CELL_LENGTH
    assert b"Ada" not in cell


def test_when_plaintexts_do_not_cast_to_the_asked_type_then_the_error_quotes_no_value(cipher: CellCipher) -> None:
    cells = cipher.encrypt_column(["SSN 123-45-6789 John Smith"], table=T, column="born", row_keys=["r1"])

    with pytest.raises(ValueError, match=r"patients\.born do not cast to date32") as caught:
        cipher.decrypt_column(cells, table=T, column="born", row_keys=["r1"], value_type=pa.date32())

    chain = [caught.value, caught.value.__cause__, caught.value.__context__]
    assert not [str(error) for error in chain if error is not None and "123-45-6789" in str(error)]


def test_when_single_cell_helpers_are_used_then_they_round_trip(cipher: CellCipher) -> None:
    cell = cipher.encrypt_cell(42, table=T, column="age", row_key=7)
    assert cipher.decrypt_cell(cell, table=T, column="age", row_key="7", value_type=pa.int64()) == 42
    assert cipher.encrypt_cell(None, table=T, column="age", row_key=7) is None
    assert cipher.decrypt_cell(None, table=T, column="age", row_key=7) is None


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c: c.encrypt_column(["a", "b"], table=T, column=C, row_keys=["only-one"]), ValueError),
        (lambda c: c.encrypt_column(["a"], table=T, column=C, row_keys=[None]), ValueError),
        (lambda c: c.encrypt_column(["a"], table=T, column=C, row_keys=["k" * 1025]), ValueError),
        (lambda c: c.encrypt_column([[1, 2]], table=T, column=C, row_keys=[1]), TypeError),
        (lambda c: c.encrypt_column("abc", table=T, column=C, row_keys=[1]), TypeError),
        (lambda c: c.encrypt_column(["a"], table="", column=C, row_keys=[1]), TypeError),
        (lambda c: c.encrypt_column(["a"], table="t" * 256, column=C, row_keys=[1]), ValueError),
        (lambda c: c.encrypt_column(["a"], table=T, column=C, row_keys=[1], scope_key="bad key!"), ValueError),
        (lambda c: c.encrypt_column(["a"], table=T, column=C, row_keys=[1], scope_key=[None]), ValueError),
        (lambda c: c.decrypt_column(pa.array(["text"]), table=T, column=C, row_keys=[1]), TypeError),
        (lambda c: c.decrypt_cell("text", table=T, column=C, row_key=1), TypeError),
    ],
    ids=["row-key-count", "null-row-key", "long-row-key", "nested", "str-values", "empty-table", "long-table",
         "bad-scope-key", "null-scope-key", "string-cells", "str-cell"],
)
def test_when_the_caller_errs_then_type_or_value_error_at_once(cipher: CellCipher, call, error) -> None:
    with pytest.raises(error):
        call(cipher)


@pytest.mark.parametrize("scoped", [False, True], ids=["batch-dek", "patient-deks"])
def test_when_a_column_spans_several_chunks_then_it_round_trips_and_a_late_bad_cell_is_named(
    cipher: CellCipher, scoped: bool
) -> None:
    count = 20_000  # more than two sealing chunks; row keys of varying width
    values = pa.array([f"v{i}" if i % 7 else None for i in range(count)])
    row_keys = [f"row{i}" for i in range(count)]
    scope = [f"p{i % 3}" for i in range(count)] if scoped else None
    cells = cipher.encrypt_column(values, table=T, column=C, row_keys=row_keys, scope_key=scope)
    assert cipher.decrypt_column(cells, table=T, column=C, row_keys=row_keys).equals(values)

    tampered = cells.to_pylist()
    tampered[17_001] = tampered[17_001][:-1] + bytes([tampered[17_001][-1] ^ 1])
    with pytest.raises(DecryptionError, match=r"^decryption failed for cell patients\.name\[row17001\]$"):
        cipher.decrypt_column(pa.array(tampered, pa.binary()), table=T, column=C, row_keys=row_keys)


def test_when_binary_plaintexts_are_read_as_strings_then_value_error_names_the_column(cipher: CellCipher) -> None:
    cells = cipher.encrypt_column(pa.array([b"\xff\xfe"]), table=T, column="blob", row_keys=[1])
    with pytest.raises(ValueError, match=f"{T}.blob"):
        cipher.decrypt_column(cells, table=T, column="blob", row_keys=[1])


# associated data and tampering ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "where",
    [{"row_key": "row-8"}, {"row_key": "row-7 "}, {"row_key": ""}, {"column": "dob"}, {"column": "nam"},
     {"table": "encounters"}, {"table": "patient", "column": "sname"}],
    ids=["other-row", "row-with-space", "empty-row", "other-column", "column-prefix", "other-table",
         "table-column-shifted"],
)
def test_when_a_cell_is_moved_to_another_row_column_or_table_then_it_fails(
    sealed: tuple[CellCipher, bytes], where: dict[str, str]
) -> None:
    cipher, cell = sealed
    _fails(cipher, cell, **where)


def test_when_cells_are_swapped_between_rows_then_the_first_moved_cell_is_named(cipher: CellCipher) -> None:
    cells = cipher.encrypt_column(["a", "b", "c"], table=T, column=C, row_keys=["r1", "r2", "r3"])
    swapped = pa.array([cells[0].as_py(), cells[2].as_py(), cells[1].as_py()])
    with pytest.raises(DecryptionError, match=r"^decryption failed for cell patients\.name\[r2\]$"):
        cipher.decrypt_column(swapped, table=T, column=C, row_keys=["r1", "r2", "r3"])


CELL_LENGTH = 2 + KEY_ID_SIZE + 12 + len("Ada Lovelace") + 16


@pytest.mark.parametrize("position", range(CELL_LENGTH))
@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_when_any_byte_of_a_cell_is_flipped_then_it_fails(
    sealed: tuple[CellCipher, bytes], position: int, mask: int
) -> None:
    cipher, cell = sealed
    tampered = bytearray(cell)
    tampered[position] ^= mask
    _fails(cipher, bytes(tampered))


@pytest.mark.parametrize("length", range(CELL_LENGTH))
def test_when_a_cell_is_truncated_at_any_length_then_it_fails(sealed: tuple[CellCipher, bytes], length: int) -> None:
    cipher, cell = sealed
    _fails(cipher, cell[:length])


@pytest.mark.parametrize(
    "mangle",
    [
        lambda c: c + b"\x00",
        lambda c: c + c,
        lambda c: bytes([c[0], 0]) + c[2:],
        lambda c: bytes([c[0], 33]) + c[2:],
        lambda c: bytes([c[0], 255]) + c[2:],
        lambda c: bytes([c[0], 17]) + c[2:],
        lambda c: bytes([c[0], 15]) + c[2:],
        lambda c: bytes([c[0], 1]) + c[2:],
        lambda c: bytes([c[0], 32]) + c[2:] + bytes(16),
        lambda c: bytes([c[0], len(c)]) + c[2:],
        lambda c: c[:2] + bytes(KEY_ID_SIZE) + c[HEADER:],
        lambda c: bytes(len(c)),
        lambda c: b"\xff" * (17 * 2**20),
    ],
    ids=["one-byte-appended", "doubled", "key-id-length-0", "key-id-length-33", "key-id-length-255",
         "key-id-length-17", "key-id-length-15", "key-id-length-1", "key-id-length-32-padded",
         "key-id-length-cell-length", "zero-key-id", "all-zero", "oversized-cell"],
)
def test_when_length_fields_or_the_cell_size_are_garbage_then_it_fails(sealed: tuple[CellCipher, bytes], mangle):
    cipher, cell = sealed
    _fails(cipher, mangle(cell))


@pytest.mark.parametrize("version", [0, 2, 0x7F, 0xFF])
def test_when_the_format_version_is_unknown_then_it_fails(sealed: tuple[CellCipher, bytes], version: int) -> None:
    cipher, cell = sealed
    _fails(cipher, bytes([version]) + cell[1:])


def test_when_a_cell_fails_then_the_error_names_the_cell_and_nothing_about_keys(
    sealed: tuple[CellCipher, bytes]
) -> None:
    cipher, cell = sealed
    with pytest.raises(DecryptionError) as raised:
        cipher.decrypt_cell(cell[:-1] + bytes([cell[-1] ^ 1]), table=T, column=C, row_key="row-7")
    message = str(raised.value)
    assert message == "decryption failed for cell patients.name[row-7]"
    assert _key_id(cell).hex() not in message and raised.value.__cause__ is None


# DEKs ---------------------------------------------------------------------------------------------------------


def test_when_decrypting_in_a_fresh_process_then_the_dek_comes_from_the_store(
    cipher: CellCipher, keyring: LocalKeyring, store: DekStore
) -> None:
    cells = cipher.encrypt_column(["a", "b"], table=T, column=C, row_keys=[1, 2])
    fresh = CellCipher(keyring, store)
    assert fresh.decrypt_column(cells, table=T, column=C, row_keys=[1, 2]).to_pylist() == ["a", "b"]
    [record] = store.records()
    assert (record.key_id, record.table, record.column, record.scope, record.scope_key, record.kek_name) == (
        _key_id(cells[0].as_py()).hex(), T, C, "batch", cipher.batch_id, KEK)


def test_when_the_dek_record_is_missing_or_foreign_then_cells_fail(
    cipher: CellCipher, keyring: LocalKeyring, store: DekStore, tmp_path: Path
) -> None:
    cell = cipher.encrypt_cell("secret", table=T, column=C, row_key="row-7")
    assert cell is not None
    other_ring = LocalKeyring.init(tmp_path / "other.json", LocalKeyring.generate_master_key())
    other_ring.ensure_key(KEK)
    _fails(CellCipher(other_ring, DekStore(tmp_path / "other-lake")), cell)  # no such DEK there
    _fails(CellCipher(keyring, store), cell[:2] + bytes(KEY_ID_SIZE) + cell[HEADER:])  # unknown key id
    store.drop_scope(cipher.batch_id)
    _fails(CellCipher(keyring, store), cell)  # the record is gone


def test_when_the_invocation_limit_is_reached_then_a_fresh_dek_is_used(keyring: LocalKeyring, store: DekStore) -> None:
    cipher = CellCipher(keyring, store, max_invocations=3)
    first = cipher.encrypt_column([f"v{i}" for i in range(10)], table=T, column=C, row_keys=list(range(10)))
    second = cipher.encrypt_column(["a", "b", "c"], table=T, column=C, row_keys=[10, 11, 12])

    ids = [_key_id(cell) for cell in first.to_pylist() + second.to_pylist()]
    assert [ids.index(k) for k in ids] == [0, 0, 0, 3, 3, 3, 6, 6, 6, 9, 9, 9, 12]  # the 4th DEK is filled up
    assert len(store.records()) == 5
    back = CellCipher(keyring, store).decrypt_column(pa.concat_arrays([first, second]), table=T, column=C,
                                                     row_keys=list(range(13)))
    assert back.to_pylist() == [f"v{i}" for i in range(10)] + ["a", "b", "c"]


def test_when_a_dek_outlives_its_ttl_then_a_fresh_one_is_made(keyring: LocalKeyring, store: DekStore) -> None:
    clock = Clock()
    cipher = CellCipher(keyring, store, dek_ttl_seconds=60, clock=clock)
    first = cipher.encrypt_cell("a", table=T, column=C, row_key=1)
    clock.now += 59
    second = cipher.encrypt_cell("b", table=T, column=C, row_key=2)
    clock.now += 1
    third = cipher.encrypt_cell("c", table=T, column=C, row_key=3)
    assert first and second and third
    assert _key_id(first) == _key_id(second) != _key_id(third)
    assert cipher.decrypt_cell(first, table=T, column=C, row_key=1) == "a"  # re-fetched from the store


def test_when_keys_are_cached_then_the_provider_is_asked_once_per_dek(keyring: LocalKeyring, store: DekStore) -> None:
    counting = Counting(keyring)
    writer = CellCipher(counting, store)  # type: ignore[arg-type]
    batches = [writer.encrypt_column([f"v{i}"] * 500, table=T, column=C, row_keys=list(range(500)))
               for i in range(4)]
    reader = CellCipher(counting, store)  # type: ignore[arg-type]
    for cells in batches:
        reader.decrypt_column(cells, table=T, column=C, row_keys=list(range(500)))
    assert (counting.generated, counting.unwrapped) == (1, 1)


@pytest.mark.parametrize(("limit", "ttl"), [(0, 1.0), (2**32 + 1, 1.0), (10, 0.0)])
def test_when_dek_limits_are_invalid_then_construction_fails(
    keyring: LocalKeyring, store: DekStore, limit: int, ttl: float
) -> None:
    with pytest.raises(ValueError):
        CellCipher(keyring, store, max_invocations=limit, dek_ttl_seconds=ttl)


class Counting:
    """Counts DEK fetches and can be told to fail like an unreachable or denying Vault."""

    def __init__(self, inner: LocalKeyring) -> None:
        self.inner = inner
        self.name = inner.name
        self.generated = self.unwrapped = 0
        self.failure: Exception | None = None

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def generate_data_key(self, key_name: str) -> DataKey:
        if self.failure:
            raise self.failure
        self.generated += 1
        return self.inner.generate_data_key(key_name)

    def unwrap(self, key_name: str, wrapped: str) -> bytes:
        return self.unwrap_many(key_name, [wrapped])[0]

    def unwrap_many(self, key_name: str, wrapped: list[str]) -> list[bytes]:
        if self.failure:
            raise self.failure
        self.unwrapped += len(wrapped)
        return self.inner.unwrap_many(key_name, wrapped)


# failing closed ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [KeyProviderUnavailableError("vault unreachable at http://127.0.0.1:8200"),
     KeyAccessDeniedError("403 on transit/datakey/plaintext/medguard-kek: check policy pipeline-writer"),
     CryptoError("no KEK")],
    ids=["unreachable", "denied", "missing-kek"],
)
def test_when_the_provider_fails_then_encrypt_raises_and_nothing_is_recorded(
    keyring: LocalKeyring, store: DekStore, failure: Exception
) -> None:
    provider = Counting(keyring)
    provider.failure = failure
    cipher = CellCipher(provider, store)  # type: ignore[arg-type]
    with pytest.raises(type(failure), match=str(failure).split(":")[0]):
        cipher.encrypt_column(["Ada"], table=T, column=C, row_keys=[1])
    assert store.records() == []
    provider.failure = None  # recovered: the re-run works and records exactly one DEK
    cell = cipher.encrypt_cell("Ada", table=T, column=C, row_key=1)
    assert cipher.decrypt_cell(cell, table=T, column=C, row_key=1) == "Ada"
    assert len(store.records()) == 1


def test_when_the_dek_store_cannot_record_a_new_key_then_encrypt_raises_and_the_key_is_never_used(
    keyring: LocalKeyring, store: DekStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    cipher = CellCipher(keyring, store)

    def broken(*args: object, **kwargs: object) -> None:
        raise StorageError("disk full")

    monkeypatch.setattr(store, "put", broken)
    with pytest.raises(StorageError, match="disk full"):
        cipher.encrypt_column(["Ada"], table=T, column=C, row_keys=[1])
    monkeypatch.undo()
    cell = cipher.encrypt_cell("Ada", table=T, column=C, row_key=1)
    [record] = store.records()
    assert cell is not None and record.key_id == _key_id(cell).hex()


def test_when_the_provider_is_unreachable_on_decrypt_then_that_error_surfaces_not_a_decryption_error(
    cipher: CellCipher, keyring: LocalKeyring, store: DekStore
) -> None:
    cell = cipher.encrypt_cell("Ada", table=T, column=C, row_key=1)
    provider = Counting(keyring)
    provider.failure = KeyProviderUnavailableError("vault unreachable")
    with pytest.raises(KeyProviderUnavailableError):
        CellCipher(provider, store).decrypt_cell(cell, table=T, column=C, row_key=1)  # type: ignore[arg-type]


# rotation ---------------------------------------------------------------------------------------------------


def test_when_kek_is_rotated_and_deks_rewrapped_then_data_stays_readable_and_old_wrappings_die(
    cipher: CellCipher, keyring: LocalKeyring, store: DekStore, tmp_path: Path
) -> None:
    cells = cipher.encrypt_column(["a", "b", "c"], table=T, column=C, row_keys=[1, 2, 3])
    other = cipher.encrypt_column(["x"], table=T, column="dob", row_keys=[1])
    before_rewrap = DekStore(tmp_path / "copy-before-rewrap")  # another lake root
    before_rewrap.put(store.records())  # an old copy of the DEK store (a backup, or an older Delta version)

    assert keyring.rotate(KEK) == 2
    assert store.rewrap_all(keyring).rewrapped == 2
    for reader_store in (store, before_rewrap):  # before retiring v1 both copies work
        reader = CellCipher(keyring, reader_store)
        assert reader.decrypt_column(cells, table=T, column=C, row_keys=[1, 2, 3]).to_pylist() == ["a", "b", "c"]

    keyring.set_min_decryption_version(KEK, 2)
    fresh = CellCipher(keyring, store)
    assert fresh.decrypt_column(cells, table=T, column=C, row_keys=[1, 2, 3]).to_pylist() == ["a", "b", "c"]
    assert fresh.decrypt_column(other, table=T, column="dob", row_keys=[1]).to_pylist() == ["x"]
    with pytest.raises(DecryptionError, match=r"patients\.name\[1\]"):
        CellCipher(keyring, before_rewrap).decrypt_column(cells, table=T, column=C, row_keys=[1, 2, 3])
    new = fresh.encrypt_cell("new", table=T, column=C, row_key=9)
    assert fresh.decrypt_cell(new, table=T, column=C, row_key=9) == "new"
    assert all(r.wrapped.startswith("keyring:v2:") for r in store.records())


# per-patient scope and crypto-shredding ---------------------------------------------------------------------


def test_when_a_patient_is_shredded_then_their_cells_die_in_every_table_version_and_others_survive(
    keyring: LocalKeyring, lake: Lake, patients: PatientKeyStore
) -> None:
    store = DekStore(lake)
    cipher = CellCipher(keyring, store, patient_keys=patients)
    scopes = ["ps1_a", "ps1_b", "ps1_a", "ps1_b"]
    rows = ["e1", "e2", "e3", "e4"]
    names = cipher.encrypt_column(["Ann", "Bob", "Ann", "Bob"], table="encounters", column="name", row_keys=rows,
                                  scope_key=scopes)
    lake.append("raw", "encounters", pa.table({"encounter_id": rows, "patient": scopes, "name": names}))
    later = cipher.encrypt_column(["Ann B.", "Bob C."], table="encounters", column="name", row_keys=["e1", "e2"],
                                  scope_key=["ps1_a", "ps1_b"])
    lake.overwrite("raw", "encounters", pa.table({"encounter_id": ["e1", "e2"], "patient": ["ps1_a", "ps1_b"],
                                                  "name": later}))
    [wrapped] = [r.wrapped for r in patients.records() if r.scope_key == "ps1_a"]

    assert cipher.shred("ps1_a") == 1
    assert cipher.shred("ps1_a") == 0  # re-running an interrupted shred is fine

    assert [r.scope_key for r in patients.records()] == ["ps1_b"]
    files = [p for p in Path(lake.root, "_keys").rglob("*") if p.is_file()]
    assert not any(wrapped.encode() in p.read_bytes() for p in files)
    for version in (0, 1):
        table = lake.read_arrow("raw", "encounters", version=version)
        reader = CellCipher(keyring, store, patient_keys=patients)  # any process, any time later
        for row in table.to_pylist():
            args = {"table": "encounters", "column": "name", "row_key": row["encounter_id"]}
            if row["patient"] == "ps1_a":
                with pytest.raises(DecryptionError, match=rf"encounters\.name\[{row['encounter_id']}\]"):
                    reader.decrypt_cell(row["name"], **args)
            else:
                assert reader.decrypt_cell(row["name"], **args).startswith("Bob")


def test_when_a_whole_column_belongs_to_one_patient_then_a_string_scope_key_is_enough(
    cipher: CellCipher, keyring: LocalKeyring, patients: PatientKeyStore
) -> None:
    cells = cipher.encrypt_column(["x", None, "y"], table=T, column=C, row_keys=[1, 2, 3], scope_key="ps1_solo")
    assert {(r.scope_key, r.kek_name) for r in patients.records()} == {("ps1_solo", KEK)}
    assert cipher.decrypt_column(cells, table=T, column=C, row_keys=[1, 2, 3]).to_pylist() == ["x", None, "y"]
    cipher.shred("ps1_solo")
    with pytest.raises(DecryptionError):
        cipher.decrypt_column(cells, table=T, column=C, row_keys=[1, 2, 3])  # the cache was dropped too


def test_when_patient_scopes_hit_the_invocation_limit_then_each_patient_gets_fresh_deks(
    keyring: LocalKeyring, store: DekStore, patients: PatientKeyStore
) -> None:
    cipher = CellCipher(keyring, store, max_invocations=2, patient_keys=patients)
    scopes = ["p1", "p2", "p1", "p1", "p2", "p1", "p3"]
    cells = cipher.encrypt_column([f"v{i}" for i in range(7)], table=T, column=C, row_keys=list(range(7)),
                                  scope_key=scopes)
    by_patient: dict[str, set[bytes]] = {}
    for patient, cell in zip(scopes, cells.to_pylist(), strict=True):
        by_patient.setdefault(patient, set()).add(_key_id(cell))
    assert {p: len(ids) for p, ids in by_patient.items()} == {"p1": 2, "p2": 1, "p3": 1}
    assert len(patients.records()) == 4
    back = CellCipher(keyring, store, patient_keys=patients).decrypt_column(cells, table=T, column=C,
                                                                            row_keys=list(range(7)))
    assert back.to_pylist() == [f"v{i}" for i in range(7)]


# holding keys -------------------------------------------------------------------------------------------------


def test_when_a_cipher_is_pickled_or_printed_then_no_key_material_leaks(cipher: CellCipher) -> None:
    cell = cipher.encrypt_cell("x", table=T, column=C, row_key=1)
    assert cell is not None
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(cipher)
    [dek] = cipher._known.values()
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(dek)
    for text in (repr(cipher), repr(dek)):
        assert _key_id(cell).hex() not in text and "redacted" in repr(dek)


def test_when_cells_are_encrypted_then_the_dek_store_holds_no_plaintext_key(
    cipher: CellCipher, store: DekStore
) -> None:
    cipher.encrypt_cell("x", table=T, column=C, row_key=1)
    stored = b"".join(p.read_bytes() for p in Path(store.uri).rglob("*") if p.is_file())
    [record] = store.records()
    plaintext = cipher._provider.unwrap(KEK, record.wrapped)
    assert plaintext not in stored and plaintext.hex().encode() not in stored


def test_when_a_patient_has_cells_in_many_columns_then_one_dek_serves_them_and_moved_cells_still_fail(
    keyring: LocalKeyring, store: DekStore, patients: PatientKeyStore
) -> None:
    cipher = CellCipher(keyring, store, patient_keys=patients)
    name = cipher.encrypt_cell("Ann", table="raw.patients", column="name", row_key="r1", scope_key="ps1_a")
    ssn = cipher.encrypt_cell("123", table="raw.notes", column="ssn", row_key="r1", scope_key="ps1_a")
    assert name is not None and ssn is not None and _key_id(name) == _key_id(ssn)
    assert len(patients.records()) == 1
    reader = CellCipher(keyring, store, patient_keys=patients)
    assert reader.decrypt_cell(ssn, table="raw.notes", column="ssn", row_key="r1") == "123"
    with pytest.raises(DecryptionError):
        reader.decrypt_cell(name, table="raw.notes", column="ssn", row_key="r1")


# several columns at once ------------------------------------------------------------------------------------


class WrapCounting:
    """Counts the provider batches that wrap new patient DEKs."""

    def __init__(self, inner: LocalKeyring) -> None:
        self.inner = inner
        self.name = inner.name
        self.batches: list[int] = []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def wrap_many(self, key_name: str, plaintexts: list[bytes]) -> list[str]:
        self.batches.append(len(plaintexts))
        return self.inner.wrap_many(key_name, plaintexts)


def test_when_columns_are_encrypted_together_then_each_decrypts_as_its_own_column_under_one_dek_per_patient(
    keyring: LocalKeyring, store: DekStore, patients: PatientKeyStore
) -> None:
    provider = WrapCounting(keyring)
    cipher = CellCipher(provider, store, patient_keys=patients)  # type: ignore[arg-type]
    names = pa.array(["Ann", None, "Bo", "Cy"])
    ssns = pa.array(["111", "222", None, None])
    births = pa.array([dt.date(1990, 1, 2), None, dt.date(1980, 3, 4), None])
    scopes = ["ps1_a", "ps1_b", "ps1_a", None]  # row 4 has a name but no patient
    rows = ["r1", "r2", "r3", "r4"]
    with pytest.raises(ValueError, match="scope_key"):
        cipher.encrypt_columns({"name": names, "ssn": ssns}, table=T, row_keys=rows, scope_key=scopes)
    assert patients.records() == [] and provider.batches == []  # checked before any key is made
    scopes[3] = "ps1_c"
    cells = cipher.encrypt_columns({"name": names, "ssn": ssns, "birth": births}, table=T, row_keys=rows,
                                   scope_key=scopes)
    assert provider.batches == [3]  # one batch for the three patients, whatever the number of columns
    reader = CellCipher(keyring, store, patient_keys=patients)
    assert reader.decrypt_column(cells["name"], table=T, column="name", row_keys=rows).to_pylist() == \
        ["Ann", None, "Bo", "Cy"]
    assert reader.decrypt_column(cells["ssn"], table=T, column="ssn", row_keys=rows).to_pylist() == \
        ["111", "222", None, None]
    assert reader.decrypt_column(cells["birth"], table=T, column="birth", row_keys=rows,
                                 value_type=pa.date32()).to_pylist() == births.to_pylist()
    name, ssn = cells["name"].to_pylist(), cells["ssn"].to_pylist()
    assert _key_id(name[0]) == _key_id(ssn[0]) == _key_id(name[2]) != _key_id(ssn[1])
    assert all(len(cell) == 46 + 3 for cell in (name[0], ssn[0], ssn[1]))  # the documented layout
    with pytest.raises(DecryptionError):  # a cell moved to another column of the same row
        reader.decrypt_cell(ssn[0], table=T, column="name", row_key="r1")
    # One column through encrypt_column and through encrypt_columns reads back the same.
    single = cipher.encrypt_column(names, table=T, column="name", row_keys=rows, scope_key=scopes)
    assert reader.decrypt_column(single, table=T, column="name", row_keys=rows).to_pylist() == names.to_pylist()


def test_when_columns_together_hit_the_invocation_limit_then_a_patient_gets_fresh_deks_across_them(
    keyring: LocalKeyring, store: DekStore, patients: PatientKeyStore
) -> None:
    cipher = CellCipher(keyring, store, max_invocations=2, patient_keys=patients)
    rows = ["r1", "r2", "r3"]
    cells = cipher.encrypt_columns({"a": ["a1", "a2", "a3"], "b": ["b1", None, "b3"]}, table=T, row_keys=rows,
                                   scope_key=["p1", "p1", "p2"])
    ids = [_key_id(c) for column in ("a", "b") for c in cells[column].to_pylist() if c is not None]
    per_dek = {key: ids.count(key) for key in set(ids)}
    assert max(per_dek.values()) <= 2 and len(per_dek) == 3  # p1's three cells need two DEKs, p2 one
    reader = CellCipher(keyring, store, patient_keys=patients)
    assert reader.decrypt_column(cells["b"], table=T, column="b", row_keys=rows).to_pylist() == ["b1", None, "b3"]
    assert reader.decrypt_column(cells["a"], table=T, column="a", row_keys=rows).to_pylist() == ["a1", "a2", "a3"]


def test_when_columns_are_encrypted_together_without_patients_then_each_column_has_its_own_batch_dek(
    cipher: CellCipher,
) -> None:
    cells = cipher.encrypt_columns({"a": ["x", "y"], "b": ["z", None]}, table=T, row_keys=[1, 2])
    a, b = cells["a"].to_pylist(), cells["b"].to_pylist()
    assert _key_id(a[0]) == _key_id(a[1]) != _key_id(b[0]) and b[1] is None
    assert cipher.decrypt_column(cells["b"], table=T, column="b", row_keys=[1, 2]).to_pylist() == ["z", None]
    assert cipher.encrypt_columns({}, table=T, row_keys=[]) == {}
    with pytest.raises(ValueError, match="values"):
        cipher.encrypt_columns({"a": ["x", "y"], "b": ["z"]}, table=T, row_keys=[1, 2], scope_key="ps1_a")

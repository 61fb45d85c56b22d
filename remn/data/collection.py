"""What every dataset reader shares: an ordered list of sequences, also indexable by name."""
from __future__ import annotations

from typing import Generic, Iterator, Sequence, TypeVar

SequenceT = TypeVar("SequenceT")


class SequenceCollection(Generic[SequenceT]):
    """`dataset[i]`, `dataset["name"]`, `len`, iteration and `names` over `self.sequences`.

    Subclasses call `_set_sequences` once and name themselves in `_describe()` for errors.
    """

    sequences: list[SequenceT]

    def _set_sequences(self, sequences: Sequence[SequenceT]) -> None:
        self.sequences = list(sequences)
        self._by_name = {seq.name: seq for seq in self.sequences}

    def _describe(self) -> str:
        raise NotImplementedError

    @property
    def names(self) -> list[str]:
        return [seq.name for seq in self.sequences]

    def __len__(self) -> int:
        return len(self.sequences)

    def __iter__(self) -> Iterator[SequenceT]:
        return iter(self.sequences)

    def __getitem__(self, key: int | str) -> SequenceT:
        if isinstance(key, str):
            if key not in self._by_name:
                raise KeyError(f"no sequence {key!r} in {self._describe()}")
            return self._by_name[key]
        return self.sequences[key]

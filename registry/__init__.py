"""The t2 registry: SQLite (SQLAlchemy + Alembic) metadata and a content-addressed blob store.

Open it with ``Registry.open(home)``; query and write through ``Registry.session()``.
"""

from registry.blobs import BlobInfo, BlobStore
from registry.errors import BlobCorrupt, BlobMissing, RegistryError, SchemaTooNew, StoreUnavailable
from registry.registry import SCHEMA_HEAD, Registry, RegistryStatus, VerifyReport
from registry.schema import (
    Base,
    BaseModel,
    Blob,
    Decomposition,
    DecompositionMatrix,
    Evaluation,
    Expert,
    ExpertParent,
    ExpertTag,
    RunMetric,
    TrainingRun,
)

__all__ = [
    "SCHEMA_HEAD",
    "Base",
    "BaseModel",
    "Blob",
    "BlobCorrupt",
    "BlobInfo",
    "BlobMissing",
    "BlobStore",
    "Decomposition",
    "DecompositionMatrix",
    "Evaluation",
    "Expert",
    "ExpertParent",
    "ExpertTag",
    "Registry",
    "RegistryError",
    "RegistryStatus",
    "RunMetric",
    "SchemaTooNew",
    "StoreUnavailable",
    "TrainingRun",
    "VerifyReport",
]

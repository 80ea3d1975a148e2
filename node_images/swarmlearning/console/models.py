"""The console's API bodies (pydantic): the OpenAPI document is generated from these."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class Problem(BaseModel):
    """Every error body: what went wrong, naming the parameter or the right that is missing."""

    detail: str


class WhoAmI(BaseModel):
    principal: str
    method: Literal["certificate", "token", "kubernetes"]
    rights: list[Literal["status", "model"]]


class SNMember(BaseModel):
    name: str
    peer_urls: list[str]
    client_urls: list[str]
    learner: bool


class LedgerHead(BaseModel):
    height: int = Field(description="number of records")
    head_hash: str = Field(description="hash of the newest record ('' for an empty ledger)")


class Network(BaseModel):
    name: str
    namespace: str | None = None
    sn_members: list[SNMember]
    ledger: LedgerHead
    live_nodes: int = Field(description="SL nodes whose membership lease is held")


class Node(BaseModel):
    name: str
    organisation: str
    fingerprint: str = Field(description="sha256 of its certificate (DER), hex")
    endpoint: str
    leader_eligible: bool
    live: bool = Field(description="its membership lease is held now")
    joined: str = Field(description="time of its first member record (RFC 3339)")
    last_round: dict[str, int] = Field(description="per contract: last round it took part in")


class Round(BaseModel):
    contract: str
    round: int
    result: Literal["round", "abandon", "open"] = Field(
        description="round: merged and committed; abandon: closed, nobody merged; open: closed, no result yet"
    )
    seq: int = Field(description="ledger seq of the result record (of the close record while open)")
    attempt: int | None = None
    leader: str | None = None
    participants: list[str]
    merge_method: str | None = None
    weights: dict[str, float] = {}
    input_digests: dict[str, str] = {}
    merged_digest: str | None = None
    rejected: dict[str, str] = Field(default={}, description="node -> reason its input was rejected")
    loss: dict[str, float] = Field(default={}, description="node -> validation loss its ML process reported")
    metric: dict[str, float] = Field(default={}, description="node -> validation metric")
    closed_at: str
    committed_at: str | None = None
    duration_s: float | None = Field(default=None, description="close record to result record, seconds")
    final: bool = Field(default=False, description="every participant had finished training")


class Task(BaseModel):
    contract: str
    params: dict[str, Any]
    created: str
    author: str
    rounds_committed: int
    latest_round: int | None = None
    participants: list[str] = Field(description="every node that took part in a round")
    finished: bool = Field(description="its latest committed round is final")
    swarm_task: str | None = Field(
        default=None, description="in a cluster: the SwarmTask running this contract"
    )
    phase: str | None = Field(default=None, description="in a cluster: that SwarmTask's phase")


class TaskDetail(Task):
    rounds: list[Round]


class ChainAudit(BaseModel):
    ok: bool
    count: int
    bad_seq: int | None = None
    reason: str = ""
    message: str

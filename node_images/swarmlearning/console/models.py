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


class RoundSlice(BaseModel):
    slice: int
    leader: str = Field(description="the node that merged this slice")
    seq: int = Field(description="ledger seq of the slice record")
    digest: str = Field(description="sha256 of the slice's merged chunk digests")


class RoundPrivacy(BaseModel):
    """What protected a round's inputs beyond keeping the data on its sites (docs/privacy.md)."""

    site_dp_epsilon: float | None = Field(
        default=None, description="site-level DP: epsilon spent once this round merged (cumulative)"
    )
    site_dp_delta: float | None = Field(default=None, description="the delta site_dp_epsilon is stated at")
    site_dp_clip_norm: float | None = None
    site_dp_noise_multiplier: float | None = None
    dp_sgd_epsilon: dict[str, float] = Field(
        default={}, description="node -> epsilon its DP-SGD training had spent at this round's input"
    )
    secure_aggregation: bool = Field(
        default=False, description="the leader merged masked inputs and learned only their weighted sum"
    )
    secagg_threshold: int | None = Field(default=None, description="revealers the unmasking needed")
    secagg_sharers: list[str] = Field(default=[], description="participants that shared their mask keys")
    secagg_revealers: list[str] = Field(default=[], description="participants whose shares unmasked the sum")
    secagg_dropped: list[str] = Field(
        default=[], description="sharers whose masked input never came; their masks were rebuilt"
    )


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
    merge_mode: Literal["single", "sharded", "secagg"] | None = Field(
        default=None,
        description="sharded: every slice had its own leader (see slices); secagg: securely aggregated",
    )
    slices: list[RoundSlice] = []
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
    privacy: RoundPrivacy | None = Field(default=None, description="absent when nothing but locality did")


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

"""SecAgg+ secure aggregation, pure and I/O-free: the server learns only the sum of the updates.

Bonawitz et al. (CCS 2017) with the sparse neighbour graph of Bell et al. (CCS 2020). The site
side is `ClientRound`, the aggregator side `ServerRound`; both are driven by the messages in
`messages` and leave transport, timing and logging to the caller.
"""

from quorum.privacy.secagg import crypto, graph, quantize, shamir
from quorum.privacy.secagg.client import ClientRound
from quorum.privacy.secagg.crypto import (
    KEY_BYTES,
    add_prg,
    agree,
    decrypt,
    encrypt,
    generate_keypair,
    load_private,
    prg,
    private_bytes,
)
from quorum.privacy.secagg.graph import neighbours
from quorum.privacy.secagg.messages import (
    MASKED_TENSOR,
    AdvertisedKeys,
    EncryptedShare,
    Peer,
    RevealedShare,
    RoundContext,
    Setup,
    ShareKind,
    UnmaskRequest,
)
from quorum.privacy.secagg.quantize import (
    DecodedSum,
    add_encoded_update,
    dequantize_sum,
    encode_update,
    error_bound,
    levels,
    max_sites,
)
from quorum.privacy.secagg.server import ServerRound
from quorum.privacy.secagg.shamir import PRIME, SHARE_BYTES, reconstruct, split

__all__ = [
    "KEY_BYTES",
    "MASKED_TENSOR",
    "PRIME",
    "SHARE_BYTES",
    "AdvertisedKeys",
    "ClientRound",
    "DecodedSum",
    "EncryptedShare",
    "Peer",
    "RevealedShare",
    "RoundContext",
    "ServerRound",
    "Setup",
    "ShareKind",
    "UnmaskRequest",
    "add_encoded_update",
    "add_prg",
    "agree",
    "crypto",
    "decrypt",
    "dequantize_sum",
    "encode_update",
    "encrypt",
    "error_bound",
    "generate_keypair",
    "graph",
    "levels",
    "load_private",
    "max_sites",
    "neighbours",
    "prg",
    "private_bytes",
    "quantize",
    "reconstruct",
    "shamir",
    "split",
]

"""A site that speaks the wire protocol by hand, to send what a correct agent never would.

It joins like a real site (signed challenge), answers evaluate offers honestly, and hands fit
offers to the test, which then crafts uploads: wrong digests, shapes, dtypes, NaN, oversize...
"""

from __future__ import annotations

import queue
import threading

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from quorum import identity
from quorum.proto import federation_pb2 as pb
from quorum.proto import federation_pb2_grpc as pb_grpc
from quorum.wire import blobs


class HostileSite:
    def __init__(self, address: str, key: Ed25519PrivateKey, task: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.FederationStub(self.channel)
        self._out: queue.Queue[pb.SiteMessage | None] = queue.Queue()
        self.fit_offers: queue.Queue[pb.TaskOffer] = queue.Queue()
        self.notices: list[pb.Notice] = []
        self._call = self.stub.Session(iter(self._out.get, None))
        self._out.put(
            pb.SiteMessage(hello=pb.Hello(public_key=identity.public_bytes(key), task=task))
        )
        challenge = next(self._call).challenge
        signature = identity.sign_join(key, challenge.server_id, challenge.nonce)
        self._out.put(pb.SiteMessage(join=pb.JoinProof(signature=signature)))
        self.session_id = next(self._call).welcome.session_id
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        # A real agent beats whether or not the server says anything; the server closes a
        # session silent for longer than session_timeout_s.
        self._beater = threading.Thread(target=self._beat, daemon=True)
        self._beater.start()

    def _beat(self) -> None:
        while not self._closed.wait(1.0):
            self._out.put(pb.SiteMessage(heartbeat=pb.Heartbeat()))

    def _read(self) -> None:
        try:
            for message in self._call:
                if message.WhichOneof("kind") == "notice":
                    self.notices.append(message.notice)
                    continue
                offer = message.task
                if offer.kind == pb.TASK_KIND_FIT:
                    self.fit_offers.put(offer)
                else:
                    self._out.put(
                        pb.SiteMessage(
                            result=pb.TaskResult(
                                task_id=offer.task_id,
                                status=pb.RESULT_STATUS_OK,
                                num_examples=1,
                                metrics_json='{"accuracy": 0.5}',
                            )
                        )
                    )
        except grpc.RpcError:
            pass

    def send(self, message: pb.SiteMessage) -> None:
        """Sends a message on the session stream, as it is."""
        self._out.put(message)

    def next_fit(self, timeout: float = 30) -> pb.TaskOffer:
        return self.fit_offers.get(timeout=timeout)

    def download(self, digest: str) -> bytes:
        request = pb.DownloadRequest(session_id=self.session_id, digest=digest)
        return b"".join(chunk.data for chunk in self.stub.Download(request))

    def upload(self, offer: pb.TaskOffer, data: bytes, **header: object) -> pb.UploadReceipt:
        fields: dict[str, object] = {
            "session_id": self.session_id,
            "task_id": offer.task_id,
            "run_id": offer.run_id,
            "round": offer.round,
            "digest": blobs.digest(data),
            "size": len(data),
            "num_examples": 1,
            "metrics_json": "{}",
            **header,
        }

        requests: queue.Queue[pb.UploadMessage | None] = queue.Queue()
        requests.put(pb.UploadMessage(header=pb.UploadHeader(**fields)))  # type: ignore[arg-type]
        replies = self.stub.Upload(iter(requests.get, None))
        reply = next(replies)
        if reply.WhichOneof("kind") == "grant":
            for chunk in blobs.chunks(data, size=64 * 1024):
                requests.put(pb.UploadMessage(chunk=bytes(chunk)))
            requests.put(None)
            reply = next(replies)
        else:
            requests.put(None)
        receipt: pb.UploadReceipt = reply.receipt
        return receipt

    def close(self) -> None:
        self._closed.set()
        self._out.put(None)
        self.channel.close()

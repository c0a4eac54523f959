#!/usr/bin/env python3
"""sidb quickstart in Python: create a collection, write items, users and interactions, read them back.

Stubs are generated from ../../proto with grpcio-tools on first run (into ./sidb/v1, not committed).

    pip install grpcio grpcio-tools
    python examples/python/quickstart.py --addr 127.0.0.1:7707
"""
import argparse
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))


def generate_stubs():
    """Compile proto/sidb/v1/*.proto into HERE/sidb/v1 (idempotent)."""
    from grpc_tools import protoc


    out = os.path.join(HERE, "sidb", "v1")
    protos = sorted(f for f in os.listdir(os.path.join(PROTO, "sidb", "v1")) if f.endswith(".proto"))
    if all(os.path.exists(os.path.join(out, p.replace(".proto", "_pb2.py"))) for p in protos):
        return
    os.makedirs(out, exist_ok=True)
    for d in (os.path.join(HERE, "sidb"), out):
        open(os.path.join(d, "__init__.py"), "a").close()
    args = ["protoc", f"-I{PROTO}", f"--python_out={HERE}", f"--grpc_python_out={HERE}"]
    args += [os.path.join(PROTO, "sidb", "v1", p) for p in protos]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default="127.0.0.1:7707")
    ap.add_argument("--collection", default="py-quickstart")
    a = ap.parse_args()

    generate_stubs()
    sys.path.insert(0, HERE)
    import grpc
    from sidb.v1 import (collections_pb2 as cpb, collections_pb2_grpc as cgrpc, items_pb2 as ipb,
                         items_pb2_grpc as igrpc, users_pb2 as upb, users_pb2_grpc as ugrpc,
                         interactions_pb2 as xpb, interactions_pb2_grpc as xgrpc, types_pb2 as t)

    ch = grpc.insecure_channel(a.addr)
    colls = cgrpc.CollectionsStub(ch)
    try:
        colls.DeleteCollection(cpb.DeleteCollectionRequest(name=a.collection))
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, e
    cfg = cpb.CollectionConfig(item_modalities=[t.Modality(name="text", dim=8)], user_dim=4)
    print("created:", colls.CreateCollection(cpb.CreateCollectionRequest(name=a.collection, config=cfg)).name)

    rng = random.Random(7)
    vec = lambda d: t.Vector(values=[rng.uniform(-1, 1) for _ in range(d)])
    items = [t.Item(id=f"movie-{i}", vectors={"text": vec(8)}, attributes={"genre": rng.choice(["drama", "comedy"])})
             for i in range(20)]
    w = igrpc.ItemsStub(ch).UpsertItems(ipb.UpsertItemsRequest(collection=a.collection, items=items))
    print(f"items written: {w.written} (sequence {w.sequence})")

    users = [t.User(id=f"user-{u}", vector=vec(4)) for u in range(3)]
    ugrpc.UsersStub(ch).UpsertUsers(upb.UpsertUsersRequest(collection=a.collection, users=users,
                                                           durability=t.BUFFERED))
    xs = [t.Interaction(user_id="user-0", item_id=f"movie-{i}", kind="rate", weight=4.0, timestamp_ms=1_000 + i)
          for i in range(5)]
    xgrpc.InteractionsStub(ch).WriteInteractions(xpb.WriteInteractionsRequest(collection=a.collection, interactions=xs))

    got = igrpc.ItemsStub(ch).GetItems(ipb.GetItemsRequest(collection=a.collection, ids=["movie-3", "nope"],
                                                           with_vectors=True))
    print("movie-3 text vector:", [round(v, 3) for v in got.items[0].vectors["text"].values], "missing:", list(got.missing_ids))
    hist = xgrpc.InteractionsStub(ch).GetUserHistory(xpb.GetUserHistoryRequest(collection=a.collection, user_id="user-0", limit=3))
    print("user-0 newest first:", [x.item_id for x in hist.interactions], "next page token:", bool(hist.next_page_token))
    c = colls.GetCollection(cpb.GetCollectionRequest(name=a.collection))
    print(f"counts: items={c.item_count} users={c.user_count} interactions={c.interaction_count}")
    try:
        bad = t.Item(id="bad", vectors={"text": t.Vector(values=[1.0] * 7)})
        igrpc.ItemsStub(ch).UpsertItems(ipb.UpsertItemsRequest(collection=a.collection, items=[bad]))
    except grpc.RpcError as e:
        print("bad item rejected:", e.code().name, "-", e.details())


if __name__ == "__main__":
    main()

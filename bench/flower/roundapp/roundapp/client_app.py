"""ClientApp: trivial training. Deserialises the model, adds a constant, sends it back with a count."""

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    layers = msg.content.array_records["arrays"].to_numpy_ndarrays()
    trained = [a + np.float32(0.001) for a in layers]
    reply = RecordDict({"arrays": ArrayRecord(trained), "metrics": MetricRecord({"num-examples": 100})})
    return Message(content=reply, reply_to=msg)

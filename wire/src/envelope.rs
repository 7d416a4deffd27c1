//! The flatbuffers encoding of the message model: the verified `Envelope` and conversions to and from the model.

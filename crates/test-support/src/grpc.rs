//! gRPC messages as raw bytes: a tonic codec that neither encodes nor
//! decodes, so tests and benchmarks need no generated protobuf code. The
//! proxy sees nothing of messages beyond their framing anyway.

use bytes::{Buf, BufMut};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

/// A message: its bytes.
pub type Msg = Vec<u8>;

/// The raw-bytes codec, for clients (`Grpc::unary(.., Raw)`) and servers
/// (`Grpc::new(Raw)`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Raw;

impl Codec for Raw {
    type Encode = Msg;
    type Decode = Msg;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Msg;
    type Error = Status;
    fn encode(&mut self, item: Msg, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Msg;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Msg>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

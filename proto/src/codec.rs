//! The codec every generated client and server uses: prost, with the status
//! codes a caller can act on. A message that does not decode is
//! `INVALID_ARGUMENT` (tonic's own codec says `INTERNAL`), and a message over
//! [`MAX_MESSAGE_BYTES`] is `RESOURCE_EXHAUSTED`.

use std::marker::PhantomData;

use prost::Message;
use prost::bytes::Buf;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

/// Largest message any Silt service decodes. Transports should allow a
/// little more, so that this limit, with its clearer status, applies first.
pub const MAX_MESSAGE_BYTES: usize = 20 << 20;

/// What transports are configured to accept, above [`MAX_MESSAGE_BYTES`].
pub const TRANSPORT_MESSAGE_BYTES: usize = MAX_MESSAGE_BYTES + (1 << 20);

/// Prost encoding; decoding with Silt's status codes.
#[derive(Debug)]
pub struct StrictCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(PhantomData)
    }
}

/// Decodes `U`, refusing oversized and malformed messages with clear codes.
#[derive(Debug)]
pub struct StrictDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let len = buf.remaining();
        if len > MAX_MESSAGE_BYTES {
            return Err(Status::resource_exhausted(format!(
                "message of {len} bytes is larger than the {MAX_MESSAGE_BYTES} allowed"
            )));
        }
        U::decode(buf)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("malformed message: {e}")))
    }
}

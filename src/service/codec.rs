//! The protobuf codec of the sidb services: tonic-prost's, except that a message that does not
//! decode is INVALID_ARGUMENT.
//!
//! tonic-prost maps a decode failure to INTERNAL (gRPC's status-code guide says so), but a
//! malformed request is the client's mistake, not the server's, and the API's error table gives
//! malformed input INVALID_ARGUMENT. build.rs points the generated services (and clients) at this
//! codec, so unary and streaming requests alike get the right code before any handler runs.

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// tonic-prost's codec with decode failures answered as INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct ApiCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for ApiCodec<T, U> {
    fn default() -> Self {
        ApiCodec(ProstCodec::new())
    }
}

impl<T, U> Codec for ApiCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ApiEncoder<T>;
    type Decoder = ApiDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ApiEncoder(self.0.encoder())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ApiDecoder(self.0.decoder())
    }
}

/// tonic-prost's encoder.
#[derive(Debug, Clone)]
pub struct ApiEncoder<T>(ProstEncoder<T>);

impl<T: Message> Encoder for ApiEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        self.0.encode(item, buf)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// tonic-prost's decoder, with its INTERNAL decode failures turned into INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct ApiDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for ApiDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|s| {
            Status::invalid_argument(format!(
                "the message is not a valid protobuf encoding of {}: {}",
                std::any::type_name::<U>()
                    .rsplit("::")
                    .next()
                    .unwrap_or("it"),
                s.message()
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

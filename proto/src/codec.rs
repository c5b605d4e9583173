//! The codec of the discovery streams: prost, with small starting buffers.
//!
//! tonic gives every stream an 8 KiB encode and an 8 KiB decode buffer when it opens. A
//! control plane holding 10,000 mostly idle discovery streams would pay 160 MB for buffers
//! that carry a few hundred bytes an hour. The buffers still grow to fit any message.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Enough for an ACK, a Subscribe or a small change without growing.
const START: usize = 512;
/// tonic's default: how much a response stream encodes before it yields to the runtime.
const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(START, YIELD_THRESHOLD)
}

/// Used by the generated Discovery client and server (`codec_path` in build.rs).
#[derive(Debug, Clone, Copy)]
pub struct DiscoveryCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for DiscoveryCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for DiscoveryCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}

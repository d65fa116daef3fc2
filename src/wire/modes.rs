//! [`ModeOverride`] <-> Envoy's `ProcessingMode`.

use crate::modes::ModeOverride;
use crate::proto::mode::processing_mode::HeaderSendMode;
use crate::proto::mode::ProcessingMode;

/// The override as Envoy's `ProcessingMode`: the request headers SEND (they are what
/// is being answered), every other header or trailer SEND or SKIP, never DEFAULT (whose
/// meaning depends on the filter's config).
pub(super) fn to_proto(o: ModeOverride) -> ProcessingMode {
    let send = |sent: bool| {
        if sent {
            HeaderSendMode::Send as i32
        } else {
            HeaderSendMode::Skip as i32
        }
    };
    ProcessingMode {
        request_header_mode: HeaderSendMode::Send as i32,
        response_header_mode: send(o.response_headers),
        request_body_mode: o.request_body.as_i32(),
        response_body_mode: o.response_body.as_i32(),
        request_trailer_mode: send(o.request_trailers),
        response_trailer_mode: send(o.response_trailers),
    }
}

/// Reads a `ProcessingMode` as Envoy applies an override: DEFAULT sends headers and
/// skips trailers, as Envoy's own defaults do.
#[cfg(any(test, doc, feature = "testing"))]
pub(super) fn from_proto(m: &ProcessingMode) -> ModeOverride {
    use crate::modes::BodyMode;
    let skip = HeaderSendMode::Skip as i32;
    let send = HeaderSendMode::Send as i32;
    ModeOverride {
        response_headers: m.response_header_mode != skip,
        request_body: BodyMode::from_i32(m.request_body_mode),
        response_body: BodyMode::from_i32(m.response_body_mode),
        request_trailers: m.request_trailer_mode == send,
        response_trailers: m.response_trailer_mode == send,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modes::{BodyMode, BodyModes};
    use crate::processor::{BodyNeed, PhaseNeeds};
    use crate::proto::mode::processing_mode::BodySendMode;

    #[test]
    fn the_override_is_send_or_skip_and_reads_back_the_same() {
        let m = to_proto(ModeOverride::for_needs(
            PhaseNeeds::HEADERS,
            BodyModes::default(),
        ));
        assert_eq!(m.request_header_mode, HeaderSendMode::Send as i32);
        assert_eq!(m.response_header_mode, HeaderSendMode::Send as i32);
        assert_eq!(m.request_body_mode, BodySendMode::None as i32);
        assert_eq!(m.response_body_mode, BodySendMode::None as i32);
        assert_eq!(m.request_trailer_mode, HeaderSendMode::Skip as i32);
        let needs = PhaseNeeds {
            request_body: BodyNeed::Buffered,
            response_body: BodyNeed::Streamed,
            ..PhaseNeeds::HEADERS
        };
        let duplex = BodyModes {
            request: BodyMode::FullDuplexStreamed,
            response: BodyMode::Buffered,
        };
        for configured in [BodyModes::default(), duplex] {
            let o = ModeOverride::for_needs(needs, configured);
            assert_eq!(from_proto(&to_proto(o)), o);
        }
        let m = to_proto(ModeOverride::for_needs(needs, duplex));
        assert_eq!(m.request_body_mode, BodySendMode::FullDuplexStreamed as i32);
        assert_eq!(m.response_body_mode, BodySendMode::Buffered as i32);
        assert_eq!(m.request_trailer_mode, HeaderSendMode::Send as i32);
    }
}

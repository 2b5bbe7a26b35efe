//! Ocelot's error → status table (`ErrorsToHttpStatusCodeMapper`,
//! `HttpExceptionToErrorMapper`) in one place. Error responses carry no body,
//! as in Ocelot.

use pingora_error::{Error, ErrorSource, ErrorType};

/// The status Ocelot would answer for a failure, or `None` when the client is
/// gone and nothing can be written.
pub fn status_for(error: &Error) -> Option<u16> {
    use ErrorType::*;
    match error.etype() {
        HTTPStatus(code) => Some(*code),
        CustomCode(_, code) => Some(*code),
        // Ocelot's route timeout (TimeoutDelegatingHandler) → RequestTimedOutError → 503.
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout
            if error.esource() != &ErrorSource::Downstream =>
        {
            Some(503)
        }
        _ => match error.esource() {
            // HttpRequestException → ConnectionToDownstreamServiceError → 502.
            ErrorSource::Upstream => Some(502),
            ErrorSource::Downstream => match error.etype() {
                ReadError | WriteError | ConnectionClosed | ReadTimedout | WriteTimedout => None,
                _ => Some(400),
            },
            ErrorSource::Internal | ErrorSource::Unset => match error.etype() {
                ConnectRefused | ConnectNoRoute | ConnectError | TLSHandshakeFailure
                | InvalidCert | HandshakeError | SocketError | ConnectProxyFailure => Some(502),
                _ => Some(500),
            },
        },
    }
}

/// An error that ends the request with `status` and an empty body.
pub fn respond_with(status: u16, why: &'static str) -> Box<Error> {
    Error::explain(ErrorType::HTTPStatus(status), why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_like_ocelot() {
        let up = |t: ErrorType| status_for(&Error::new_up(t));
        assert_eq!(up(ErrorType::ConnectRefused), Some(502));
        assert_eq!(up(ErrorType::ConnectTimedout), Some(503));
        assert_eq!(up(ErrorType::ReadTimedout), Some(503));
        assert_eq!(up(ErrorType::InvalidCert), Some(502));
        assert_eq!(
            status_for(&Error::new(ErrorType::HTTPStatus(404))),
            Some(404)
        );
        assert_eq!(
            status_for(&Error::new_down(ErrorType::ConnectionClosed)),
            None
        );
        assert_eq!(
            status_for(&Error::new_down(ErrorType::InvalidHTTPHeader)),
            Some(400)
        );
    }
}

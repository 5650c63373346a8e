//! The request checks both HTTP APIs share, in Mesos' order and words (`../shared/mesos-v1-api.md` section
//! 1): the media type, then the body (JSON or protobuf), then as a Call. Framework-free: statuses are plain
//! numbers.

use crate::protobuf::Protobuf;

/// A refusal: the HTTP status and the plain-text body.
pub type Refusal = (u16, String);

/// How a call or an event stream is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// `application/json`: Mesos' JSON mapping (see the crate docs).
    #[default]
    Json,
    /// `application/x-protobuf`: Mesos' protobuf messages (see [`crate::protobuf`]).
    Protobuf,
}

impl Encoding {
    /// Its media type, for `Content-Type`.
    pub fn media_type(self) -> &'static str {
        match self {
            Encoding::Json => "application/json",
            Encoding::Protobuf => "application/x-protobuf",
        }
    }

    /// `message` in this encoding, as one RecordIO record.
    ///
    /// # Errors
    /// Protobuf only: `message` does not fit its protobuf form (a bug in this crate, which its tests look
    /// for).
    pub fn record<T: serde::Serialize + Protobuf>(self, message: &T) -> Result<Vec<u8>, String> {
        match self {
            Encoding::Json => Ok(crate::recordio::json(message)),
            Encoding::Protobuf => {
                crate::protobuf::encode(message).map(|b| crate::recordio::encode(&b))
            }
        }
    }
}

/// Checks a request's `Content-Type` (its parameters, such as `; charset=utf-8`, are ignored): JSON or
/// protobuf.
///
/// # Errors
/// `400` when absent; `415` for any other type.
pub fn check_content_type(value: Option<&str>) -> Result<Encoding, Refusal> {
    let media = value.map(|v| {
        v.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    });
    match media.as_deref() {
        None => Err((400, "Expecting 'Content-Type' to be present".into())),
        Some("application/json") => Ok(Encoding::Json),
        Some("application/x-protobuf") => Ok(Encoding::Protobuf),
        Some(other) => Err((
            415,
            format!(
                "Expecting 'Content-Type' of application/json or application/x-protobuf; got '{other}'"
            ),
        )),
    }
}

/// Parses `body`, in `encoding`, as a call `T`.
///
/// # Errors
/// JSON: `400 Failed to parse body into JSON: ...` or `400 Failed to convert JSON into Call protobuf: ...`;
/// protobuf: `400 Failed to parse body into Call protobuf: ...`.
pub fn parse_call<T: serde::de::DeserializeOwned + Protobuf>(
    body: &[u8],
    encoding: Encoding,
) -> Result<T, Refusal> {
    match encoding {
        Encoding::Json => parse_json(body),
        Encoding::Protobuf => crate::protobuf::decode(body)
            .map_err(|e| (400, format!("Failed to parse body into Call protobuf: {e}"))),
    }
}

/// Parses `body` as JSON, then as `T` (the operator API, which speaks JSON only). A field whose value is
/// `null` is taken as absent, as Mesos' JSON parser takes it (clients such as the Node.js `mesos-framework`
/// send every unset field as `null`).
///
/// # Errors
/// `400 Failed to parse body into JSON: ...` or `400 Failed to convert JSON into Call protobuf: ...`.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    let mut value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| (400, format!("Failed to parse body into JSON: {e}")))?;
    drop_nulls(&mut value);
    serde_json::from_value(value).map_err(|e| {
        (
            400,
            format!("Failed to convert JSON into Call protobuf: {e}"),
        )
    })
}

/// Removes every object member whose value is `null`, at any depth.
fn drop_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(members) => {
            members.retain(|_, v| !v.is_null());
            members.values_mut().for_each(drop_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// For a SUBSCRIBE: the event stream's encoding from its `Accept` header, as Mesos chooses it: JSON when the
/// header is absent or allows `application/json` (`*/*`, `application/*`), else protobuf when it allows
/// `application/x-protobuf`.
///
/// # Errors
/// `406` when it allows neither.
pub fn check_accept(value: Option<&str>) -> Result<Encoding, Refusal> {
    let Some(v) = value else {
        return Ok(Encoding::Json);
    };
    let allows = |wanted: &str| {
        v.split(',').any(|m| {
            let m = m.split(';').next().unwrap_or_default().trim();
            m == "*/*" || m == "application/*" || m.eq_ignore_ascii_case(wanted)
        })
    };
    if allows("application/json") {
        Ok(Encoding::Json)
    } else if allows("application/x-protobuf") {
        Ok(Encoding::Protobuf)
    } else {
        Err((
            406,
            format!(
                "Expecting 'Accept' to allow application/json or application/x-protobuf; got '{v}'"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_are_checked_as_mesos_checks_them() {
        assert_eq!(
            check_content_type(Some("application/json; charset=utf-8")),
            Ok(Encoding::Json)
        );
        assert_eq!(
            check_content_type(Some("application/x-protobuf")),
            Ok(Encoding::Protobuf)
        );
        assert_eq!(check_content_type(None).unwrap_err().0, 400);
        assert_eq!(
            check_content_type(Some("application/unknown-media-type"))
                .unwrap_err()
                .0,
            415
        );
        assert_eq!(check_accept(None), Ok(Encoding::Json));
        assert_eq!(
            check_accept(Some("text/html, */*;q=0.1")),
            Ok(Encoding::Json)
        );
        assert_eq!(
            check_accept(Some("application/x-protobuf")),
            Ok(Encoding::Protobuf)
        );
        assert_eq!(check_accept(Some("foo")).unwrap_err().0, 406);
        assert!(
            parse_call::<crate::scheduler::Call>(b"MALFORMED", Encoding::Json)
                .unwrap_err()
                .1
                .contains("parse body into JSON")
        );
        assert!(
            parse_call::<crate::scheduler::Call>(br#"{"type": 7}"#, Encoding::Json)
                .unwrap_err()
                .1
                .contains("convert JSON")
        );
        // null is absent, as in Mesos.
        let call: crate::scheduler::Call = parse_call(
            br#"{"type": "SUBSCRIBE", "framework_id": null, "subscribe": {"framework_info":
                {"user": "u", "name": "n", "id": null, "capabilities": null, "role": null}}}"#,
            Encoding::Json,
        )
        .unwrap();
        assert_eq!(call.subscribe.unwrap().framework_info.unwrap().id, None);
        // Field 2 (type) as a length-delimited field: not a Call.
        assert!(
            parse_call::<crate::scheduler::Call>(&[0x12, 0x05, b'h'], Encoding::Protobuf)
                .unwrap_err()
                .1
                .contains("into Call protobuf")
        );
    }
}

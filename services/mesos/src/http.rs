//! The request checks both HTTP APIs share, in Mesos' order and words (`../shared/mesos-v1-api.md` section
//! 1): the media type, then the body as JSON, then as a Call. Framework-free: statuses are plain numbers.

/// A refusal: the HTTP status and the plain-text body.
pub type Refusal = (u16, String);

/// Checks a request's `Content-Type` (its parameters, such as `; charset=utf-8`, are ignored): JSON passes.
///
/// # Errors
/// `400` when absent; `415` for protobuf (not supported yet) or any other type.
pub fn check_content_type(value: Option<&str>) -> Result<(), Refusal> {
    let media = value.map(|v| {
        v.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    });
    match media.as_deref() {
        None => Err((400, "Expecting 'Content-Type' to be present".into())),
        Some("application/json") => Ok(()),
        Some("application/x-protobuf") => Err((
            415,
            "Allot's Mesos API speaks application/json only (not application/x-protobuf yet)"
                .into(),
        )),
        Some(other) => Err((
            415,
            format!("Expecting 'Content-Type' of application/json; got '{other}'"),
        )),
    }
}

/// Parses `body` as JSON, then as a call `T`.
///
/// # Errors
/// `400 Failed to parse body into JSON: ...` or `400 Failed to convert JSON into Call protobuf: ...`.
pub fn parse_call<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| (400, format!("Failed to parse body into JSON: {e}")))?;
    serde_json::from_value(value).map_err(|e| {
        (
            400,
            format!("Failed to convert JSON into Call protobuf: {e}"),
        )
    })
}

/// For a SUBSCRIBE: whether its `Accept` header allows JSON (absent, `*/*`, `application/*` or
/// `application/json`).
///
/// # Errors
/// `406` otherwise (protobuf streams are not supported yet).
pub fn check_accept(value: Option<&str>) -> Result<(), Refusal> {
    let Some(v) = value else { return Ok(()) };
    let ok = v.split(',').any(|m| {
        matches!(
            m.split(';').next().unwrap_or_default().trim(),
            "*/*" | "application/*" | "application/json"
        )
    });
    match ok {
        true => Ok(()),
        false => Err((
            406,
            format!("Expecting 'Accept' to allow application/json; got '{v}'"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_are_checked_as_mesos_checks_them() {
        assert!(check_content_type(Some("application/json; charset=utf-8")).is_ok());
        assert_eq!(check_content_type(None).unwrap_err().0, 400);
        assert_eq!(
            check_content_type(Some("application/unknown-media-type"))
                .unwrap_err()
                .0,
            415
        );
        assert!(check_accept(None).is_ok());
        assert!(check_accept(Some("text/html, */*;q=0.1")).is_ok());
        assert_eq!(check_accept(Some("foo")).unwrap_err().0, 406);
        assert!(
            parse_call::<crate::scheduler::Call>(b"MALFORMED")
                .unwrap_err()
                .1
                .contains("parse body into JSON")
        );
        assert!(
            parse_call::<crate::scheduler::Call>(br#"{"type": 7}"#)
                .unwrap_err()
                .1
                .contains("convert JSON")
        );
    }
}

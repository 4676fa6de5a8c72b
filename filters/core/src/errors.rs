//! Error replies in the shape OpenAI clients parse, so an SDK raises the
//! matching exception (`BadRequestError`, `NotFoundError`, …).

use serde_json::json;

/// The JSON body of an OpenAI-style error.
pub fn openai_error_body(message: &str, error_type: &str, code: Option<&str>) -> Vec<u8> {
    json!({"error": {"message": message, "type": error_type, "param": null, "code": code}})
        .to_string()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_openai_shape() {
        let body: serde_json::Value =
            serde_json::from_slice(&openai_error_body("bad \"json\"", "invalid_request_error", Some("bad_json"))).unwrap();
        assert_eq!(body["error"]["message"], "bad \"json\"");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["code"], "bad_json");
        assert!(body["error"]["param"].is_null());
    }
}

//! The parameters of the standard interop cases (gRPC's interop-test-descriptions), shared by
//! every client here, and the row format the conformance table reads.

/// large_unary: request payload and response sizes.
pub const LARGE_REQUEST: i32 = 271_828;
/// large_unary: response size.
pub const LARGE_RESPONSE: i32 = 314_159;
/// client_streaming: request payload sizes.
pub const CLIENT_STREAM_SIZES: [i32; 4] = [27_182, 8, 1_828, 45_904];
/// client_streaming: their sum.
pub const CLIENT_STREAM_TOTAL: i32 = 74_922;
/// server_streaming: response sizes.
pub const SERVER_STREAM_SIZES: [i32; 4] = [31_415, 9, 2_653, 58_979];
/// ping_pong: (response size, request payload size) per round.
pub const PING_PONG: [(i32, i32); 4] = [(31_415, 27_182), (9, 8), (2_653, 1_828), (58_979, 45_904)];
/// status_code_and_message: the status the server is asked to return.
pub const STATUS_MESSAGE: &str = "test status message";
/// special_status_message: a message with whitespace and non-ASCII characters.
pub const SPECIAL_STATUS_MESSAGE: &str =
    "\t\ntest with whitespace\r\nand Unicode BMP \u{263A} and non-BMP \u{1F608}\t\n";
/// custom_metadata: initial metadata value.
pub const INITIAL_VALUE: &str = "test_initial_metadata_value";
/// custom_metadata: trailing binary metadata value.
pub const TRAILING_VALUE: &[u8] = &[0x0a, 0x0b, 0x0a, 0x0b, 0x0a, 0x0b];

/// Every case name, in the order they run.
pub const ALL: [&str; 14] = [
    "empty_unary",
    "large_unary",
    "client_streaming",
    "server_streaming",
    "ping_pong",
    "empty_stream",
    "timeout_on_sleeping_server",
    "cancel_after_begin",
    "cancel_after_first_response",
    "status_code_and_message",
    "special_status_message",
    "custom_metadata",
    "unimplemented_method",
    "unimplemented_service",
];

/// Prints one table row; returns whether the case passed.
pub fn report(label: &str, case: &str, outcome: anyhow::Result<String>) -> bool {
    let (status, detail) = match &outcome {
        Ok(detail) => ("PASS", detail.clone()),
        Err(e) => ("FAIL", format!("{e:#}")),
    };
    let detail: String = detail.chars().take(90).collect();
    println!(
        "{label:<10} {case:<28} {status:<5} {}",
        detail.replace('\n', " ")
    );
    outcome.is_ok()
}

use lewel::testing::{check_help, check_not_implemented};

const BIN: &str = env!("CARGO_BIN_EXE_linear-probe");

#[test]
fn help_lists_exit_codes_and_an_example() {
    check_help(BIN, "linear-probe");
}

#[test]
fn refuses_to_pretend() {
    check_not_implemented(BIN, &[]);
    check_not_implemented(BIN, &["--seed", "1", "some/data"]);
}

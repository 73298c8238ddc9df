//! `silt`: parse the command line, start tracing, run the command, and turn
//! the outcome into an exit code (0 only on success).

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}

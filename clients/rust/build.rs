//! Generates the jobagent.v1 messages and the JobService client from protos/ at build time
//! (so the Rust code can never drift from the protos).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = "../../protos";
    tonic_build::configure()
        .build_server(false)
        .compile_protos(
            &[
                format!("{protos}/jobagent/v1/job_service.proto"),
                format!("{protos}/jobagent/v1/jobs.proto"),
            ],
            &[protos],
        )?;
    println!("cargo:rerun-if-changed={protos}");
    Ok(())
}

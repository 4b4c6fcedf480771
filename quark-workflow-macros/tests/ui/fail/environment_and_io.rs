use quark_workflow::{OrchestrationContext, OrchestrationError, orchestration};

mod tokio {
    pub mod fs {
        pub async fn read(_: &str) {}
    }
    pub mod net {
        pub struct TcpStream;
        impl TcpStream {
            pub async fn connect(_: &str) {}
        }
    }
}

#[orchestration]
async fn effects(_ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
    let _home = std::env::var("HOME");
    let _bytes = std::fs::read("/etc/hostname");
    tokio::fs::read("/etc/hostname").await;
    tokio::net::TcpStream::connect("example.invalid:80").await;
    Ok(())
}

fn main() {}

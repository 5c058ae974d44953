// Command containerd-stargz-grpc serves stargz-snapshotter's remote snapshotter (its root module's
// `service` package) over gRPC on a unix socket, for containerd's proxy_plugins. The upstream command
// lives in a module `go install` cannot build (it has replace directives), so this is a thin main of ours:
// flags -address, -config (TOML, the upstream keys), -root; SIGINT or SIGTERM stops it.
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/stargz-snapshotter/service"
	"github.com/pelletier/go-toml/v2"
	"google.golang.org/grpc"
)

func main() {
	address := flag.String("address", "/run/containerd-stargz-grpc/containerd-stargz-grpc.sock", "unix socket to serve on")
	configPath := flag.String("config", "", "TOML configuration (stargz-snapshotter's keys); empty: defaults")
	root := flag.String("root", "/var/lib/containerd-stargz-grpc", "state directory")
	flag.Parse()

	var config service.Config
	if *configPath != "" {
		raw, err := os.ReadFile(*configPath)
		if err != nil {
			log.Fatalf("reading %s: %v", *configPath, err)
		}
		if err := toml.Unmarshal(raw, &config); err != nil {
			log.Fatalf("parsing %s: %v", *configPath, err)
		}
	}
	ctx := context.Background()
	snapshotter, err := service.NewStargzSnapshotterService(ctx, *root, &config)
	if err != nil {
		log.Fatalf("starting the snapshotter: %v", err)
	}
	server := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(server, snapshotservice.FromSnapshotter(snapshotter))
	if err := os.MkdirAll(filepath.Dir(*address), 0o700); err != nil {
		log.Fatal(err)
	}
	_ = os.Remove(*address)
	listener, err := net.Listen("unix", *address)
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		if err := server.Serve(listener); err != nil {
			log.Fatalf("serving %s: %v", *address, err)
		}
	}()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	<-stop
	server.Stop()
	if err := snapshotter.Close(); err != nil {
		log.Printf("closing the snapshotter: %v", err)
	}
}

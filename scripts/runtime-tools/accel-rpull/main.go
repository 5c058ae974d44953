// Command accel-rpull pulls an image into containerd for a remote snapshotter, with the snapshot labels
// that snapshotter needs to mount layers lazily instead of downloading them:
//
//	-labels cri:     containerd's CRI labels (image ref, layer digest, image layers), as the CRI plugin,
//	                 nerdctl and `ctr-remote image rpull --use-containerd-labels` set them (nydus-snapshotter);
//	-labels stargz:  stargz-snapshotter's own labels, as `ctr-remote image rpull` sets them.
//
// containerd 1.6's `ctr pull` sets neither. Plain HTTP for loopback registries with -plain-http.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"github.com/containerd/stargz-snapshotter/fs/source"
)

func main() {
	address := flag.String("address", "/run/containerd/containerd.sock", "containerd's socket")
	namespace := flag.String("namespace", "default", "containerd namespace")
	snapshotter := flag.String("snapshotter", "", "the remote snapshotter's name in containerd's config")
	labels := flag.String("labels", "cri", "which snapshot labels to set: cri or stargz")
	plainHTTP := flag.Bool("plain-http", false, "talk plain HTTP to the registry")
	timeout := flag.Duration("timeout", 5*time.Minute, "give up after this long")
	flag.Parse()
	if flag.NArg() != 1 || *snapshotter == "" {
		fmt.Fprintln(os.Stderr, "usage: accel-rpull -snapshotter NAME [-labels cri|stargz] [-plain-http] REF")
		os.Exit(2)
	}
	ref := flag.Arg(0)

	var wrapper func(images.Handler) images.Handler
	switch *labels {
	case "cri":
		wrapper = snapshotters.AppendInfoHandlerWrapper(ref)
	case "stargz":
		wrapper = source.AppendDefaultLabelsHandlerWrapper(ref, 0) // no prefetch: read only what is used
	default:
		log.Fatalf("-labels %q: want cri or stargz", *labels)
	}

	client, err := containerd.New(*address)
	if err != nil {
		log.Fatalf("connecting to %s: %v", *address, err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(namespaces.WithNamespace(context.Background(), *namespace), *timeout)
	defer cancel()
	ctx, done, err := client.WithLease(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer done(ctx)

	resolver := docker.NewResolver(docker.ResolverOptions{
		Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(func(string) (bool, error) {
			return *plainHTTP, nil
		})),
	})
	image, err := client.Pull(ctx, ref,
		containerd.WithResolver(resolver),
		containerd.WithPullUnpack,
		containerd.WithPullSnapshotter(*snapshotter),
		containerd.WithImageHandlerWrapper(wrapper),
	)
	if err != nil {
		log.Fatalf("pulling %s: %v", ref, err)
	}
	fmt.Printf("pulled %s %s\n", image.Name(), image.Target().Digest)
}

package main

import (
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/containerd/stargz-snapshotter/estargz"
	"github.com/containerd/stargz-snapshotter/estargz/zstdchunked"
	digest "github.com/opencontainers/go-digest"
)

// The keys stargz-snapshotter's estargz/zstdchunked package (and containers/storage before 1.45)
// use; the stargz TOC digest is the one the snapshotter verifies the layer with.
const (
	legacyManifestChecksumAnnotation = zstdchunked.ManifestChecksumAnnotation
	legacyManifestPositionAnnotation = zstdchunked.ManifestPositionAnnotation
	legacyFooterSize                 = zstdchunked.FooterSize
)

var legacyZstdChunkedMagic = []byte("GnUlInUx")

// LazyRead is what one reference reader fetched by range to reach a layer's TOC and one file.
type LazyRead struct {
	Reader    string `json:"reader"`
	BlobBytes int64  `json:"blob_bytes"`
	TOCBytes  int64  `json:"toc_bytes"`            // fetched before any file content: footer, TOC (and tar-split)
	File      string `json:"file,omitempty"`       // the file then read
	FileBytes int64  `json:"file_bytes,omitempty"` // fetched to read that file
	Ranges    int    `json:"ranges"`               // range requests in all
}

// countingReaderAt counts the bytes and calls going to the blob, as a registry would see range requests.
type countingReaderAt struct {
	r     io.ReaderAt
	bytes atomic.Int64
	calls atomic.Int64
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(p, off)
	c.bytes.Add(int64(n))
	c.calls.Add(1)
	return n, err
}

// stargzLazyRead opens the blob the way stargz-snapshotter does (estargz.Open with the zstdchunked
// decompressor, reading the footer and the TOC by range), verifies the TOC against the stargz TOC
// digest annotation, reads one regular file through the reader (chunk by chunk, each checked by its
// chunk verifier) counting the bytes fetched, then walks every file the same way. It returns the
// measurement and each regular file's sha256 by cleaned name.
func stargzLazyRead(blob *io.SectionReader, annotations map[string]string, wanted string) (LazyRead, map[string]string, int, int, error) {
	lazy := LazyRead{Reader: estargzLibrary + "/zstdchunked", BlobBytes: blob.Size()}
	counter := &countingReaderAt{r: blob}
	reader, err := estargz.Open(io.NewSectionReader(counter, 0, blob.Size()), estargz.WithDecompressors(new(zstdchunked.Decompressor)))
	if err != nil {
		return lazy, nil, 0, 0, fmt.Errorf("estargz.Open with the zstdchunked decompressor: %w", err)
	}
	tocDigestText, ok := annotations[estargz.TOCJSONDigestAnnotation]
	if !ok {
		return lazy, nil, 0, 0, fmt.Errorf("annotation %s is missing: stargz-snapshotter mounts nothing without it (unless its verification is off)", estargz.TOCJSONDigestAnnotation)
	}
	tocDigest, err := digest.Parse(tocDigestText)
	if err != nil {
		return lazy, nil, 0, 0, fmt.Errorf("annotation %s: %w", estargz.TOCJSONDigestAnnotation, err)
	}
	verifier, err := reader.VerifyTOC(tocDigest)
	if err != nil {
		return lazy, nil, 0, 0, fmt.Errorf("VerifyTOC: %w", err)
	}
	lazy.TOCBytes = counter.bytes.Load()

	file, err := pickFile(reader, wanted)
	if err != nil {
		return lazy, nil, 0, 0, err
	}
	before := counter.bytes.Load()
	if _, _, err := verifyEstargzFile(reader, verifier, file); err != nil {
		return lazy, nil, 0, 0, err
	}
	lazy.File, lazy.FileBytes = file.Name, counter.bytes.Load()-before
	lazy.Ranges = int(counter.calls.Load())

	tree, files, chunks, err := walkEstargz(reader, verifier)
	if err != nil {
		return lazy, nil, files, chunks, err
	}
	sums := map[string]string{}
	for _, e := range tree {
		if e.Type == "reg" && e.Sha256 != nil {
			sums[cleanName(e.Name)] = *e.Sha256
		}
	}
	return lazy, sums, files, chunks, nil
}

// pickFile is the named regular file, or else the first one in the TOC with content.
func pickFile(reader *estargz.Reader, wanted string) (*estargz.TOCEntry, error) {
	if wanted != "" {
		e, ok := reader.Lookup(wanted)
		if !ok || e.Type != "reg" {
			return nil, fmt.Errorf("no regular file %q in the TOC", wanted)
		}
		return e, nil
	}
	var found *estargz.TOCEntry
	root, ok := reader.Lookup("")
	if !ok {
		return nil, errors.New("reader has no root entry")
	}
	var walk func(dir *estargz.TOCEntry)
	walk = func(dir *estargz.TOCEntry) {
		dir.ForeachChild(func(_ string, child *estargz.TOCEntry) bool {
			switch {
			case found != nil:
				return false
			case child.Type == "reg" && child.Size > 0:
				found = child
				return false
			case child.Type == "dir":
				walk(child)
			}
			return found == nil
		})
	}
	walk(root)
	if found == nil {
		return nil, errors.New("the layer has no regular file with content")
	}
	return found, nil
}

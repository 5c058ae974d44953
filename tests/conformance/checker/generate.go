package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
	"go.podman.io/storage/pkg/chunked/compressor"
)

// writeAtomically streams produce's output to a temporary file next to out, then renames it, so a
// failed run never leaves a truncated blob behind. It returns the blob's digest and size.
func writeAtomically(out string, produce func(io.Writer) error) (digest.Digest, int64, error) {
	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-")
	if err != nil {
		return "", 0, err
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	digester := digest.Canonical.Digester()
	counter := &countingWriter{}
	if err := produce(io.MultiWriter(tmp, digester.Hash(), counter)); err != nil {
		tmp.Close()
		return "", 0, err
	}
	if err := tmp.Close(); err != nil {
		return "", 0, err
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return "", 0, err
	}
	return digester.Digest(), counter.n, nil
}

// openSection opens a file for random access; the caller closes the file.
func openSection(path string) (*os.File, *io.SectionReader, error) {
	file, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	info, err := file.Stat()
	if err != nil {
		file.Close()
		return nil, nil, err
	}
	return file, io.NewSectionReader(file, 0, info.Size()), nil
}

// generateEstargz builds a reference eStargz blob with estargz.Build and reports the annotations
// a registry descriptor for it carries.
func generateEstargz(tarPath, out string, chunkSize, workers int) Result {
	result := Result{Format: "estargz", Library: estargzLibrary}
	file, section, err := openSection(tarPath)
	if err != nil {
		return failed(result, err)
	}
	defer file.Close()
	options := []estargz.Option{estargz.WithParallelism(workers)}
	if chunkSize > 0 {
		options = append(options, estargz.WithChunkSize(chunkSize))
	}
	blob, err := estargz.Build(section, options...)
	if err != nil {
		return failed(result, fmt.Errorf("estargz.Build: %w", err))
	}
	defer blob.Close()
	blobDigest, size, err := writeAtomically(out, func(w io.Writer) error {
		_, err := io.Copy(w, blob)
		return err
	})
	if err != nil {
		return failed(result, err)
	}
	uncompressedSize, err := blob.UncompressedSize()
	if err != nil {
		return failed(result, err)
	}
	result.Annotations = map[string]string{
		estargz.TOCJSONDigestAnnotation:         blob.TOCDigest().String(),
		estargz.StoreUncompressedSizeAnnotation: strconv.FormatInt(uncompressedSize, 10),
	}
	result.Digest, result.Size = blobDigest.String(), int64Ptr(size)
	result.DiffID, result.UncompressedSize = blob.DiffID().String(), int64Ptr(uncompressedSize)
	result.TOCDigest = blob.TOCDigest().String()
	result.OK = true
	return result
}

// generateZstdChunked compresses a tar with the containers/storage zstd:chunked writer; the
// annotations are the ones the writer reports for the layer descriptor.
func generateZstdChunked(tarPath, out string, level int) Result {
	result := Result{Format: "zstd:chunked", Library: "go.podman.io/storage/pkg/chunked/compressor"}
	file, section, err := openSection(tarPath)
	if err != nil {
		return failed(result, err)
	}
	defer file.Close()
	annotations := map[string]string{}
	diffIDDigester := digest.Canonical.Digester()
	blobDigest, size, err := writeAtomically(out, func(w io.Writer) error {
		writer, err := compressor.ZstdCompressor(w, annotations, &level)
		if err != nil {
			return err
		}
		if _, err := io.Copy(writer, io.TeeReader(section, diffIDDigester.Hash())); err != nil {
			writer.Close()
			return err
		}
		return writer.Close()
	})
	if err != nil {
		return failed(result, fmt.Errorf("zstd:chunked compressor: %w", err))
	}
	result.Annotations = annotations
	result.Digest, result.Size = blobDigest.String(), int64Ptr(size)
	result.DiffID, result.UncompressedSize = diffIDDigester.Digest().String(), int64Ptr(section.Size())
	result.TOCDigest = annotations[manifestChecksumAnnotation]
	result.OK = true
	return result
}

package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"
	digest "github.com/opencontainers/go-digest"
	tarsplittar "github.com/vbatts/tar-split/archive/tar"
	"github.com/vbatts/tar-split/tar/asm"
	tarsplitstorage "github.com/vbatts/tar-split/tar/storage"
	storage "go.podman.io/storage"
	graphdriver "go.podman.io/storage/drivers"
	"go.podman.io/storage/pkg/archive"
	"go.podman.io/storage/pkg/chunked"
	"go.podman.io/storage/types"
)

const zstdChunkedLibrary = "go.podman.io/storage/pkg/chunked"

// Annotation keys and constants of the zstd:chunked format. The library keeps them in an internal
// package, so they are repeated here.
const (
	manifestChecksumAnnotation = "io.github.containers.zstd-chunked.manifest-checksum"
	manifestPositionAnnotation = "io.github.containers.zstd-chunked.manifest-position"
	tarSplitPositionAnnotation = "io.github.containers.zstd-chunked.tarsplit-position"
	manifestBigDataKey         = "zstd-chunked-manifest" // differ output holding the verified, decompressed TOC
	footerSize                 = 64
	skippableFrameHeaderSize   = 8
	manifestTypeCRFS           = 1
)

var (
	skippableFrameMagic = []byte{0x50, 0x2a, 0x4d, 0x18}
	zstdChunkedMagic    = []byte("GNUlInUx")
)

// tocEntry mirrors the JSON of the library's TOC entries (internal/minimal.FileMetadata).
type tocEntry struct {
	Type        string            `json:"type"`
	Name        string            `json:"name"`
	Linkname    string            `json:"linkName"`
	Mode        int64             `json:"mode"`
	Size        int64             `json:"size"`
	UID         int               `json:"uid"`
	GID         int               `json:"gid"`
	Devmajor    int64             `json:"devMajor"`
	Devminor    int64             `json:"devMinor"`
	Xattrs      map[string]string `json:"xattrs"`
	Digest      string            `json:"digest"`
	ChunkSize   int64             `json:"chunkSize"`
	ChunkOffset int64             `json:"chunkOffset"`
	ChunkDigest string            `json:"chunkDigest"`
	ChunkType   string            `json:"chunkType"`
}

type tocDocument struct {
	Version        int        `json:"version"`
	Entries        []tocEntry `json:"entries"`
	TarSplitDigest string     `json:"tarSplitDigest"`
}

// checkZstdChunked runs the containers/storage partial-pull differ (chunked.NewDiffer +
// ApplyDiff, the code podman/CRI-O use to pull zstd:chunked layers) on the blob into a scratch
// directory. The library itself checks: manifest-position/tarsplit-position annotations, the TOC
// digest against the manifest-checksum annotation, the tar-split digest recorded in the TOC, that
// TOC and tar-split describe exactly the same entries and metadata, every regular file's content
// digest as it is extracted from the byte ranges the TOC points at, and it recomputes the
// uncompressed tar digest from tar-split + extracted files. This function adds: the binary footer
// agrees with the annotations, every chunk digest of the TOC matches the extracted content, the
// whole blob decompresses (as plain zstd) to a tar identical to the differ's reconstruction (and to
// --diff-id when given), and the TOC tree equals the tree of that tar.
//
// Two variants are told apart by their annotations. "containers-storage" (the current format:
// io.github.containers.* keys, 64-byte footer) is read as above. "stargz" (io.containers.* keys,
// the stargz TOC digest, 40-byte footer: what stargz-snapshotter's estargz/zstdchunked reads) is
// also opened the way stargz-snapshotter does (see stargzLazyRead), and the containers/storage
// differ reads it through its older keys mapped onto the current ones (containers/storage before
// 1.45 read those keys, with the same meaning). Both report, in lazy_reads, the bytes each reader
// fetched by range before and after reaching the TOC.
func checkZstdChunked(blobPath, annotationsPath, expectedDiffID, lazyFile string) Result {
	result := Result{Format: "zstd:chunked", Library: zstdChunkedLibrary}
	annotations, err := readAnnotations(annotationsPath)
	if err != nil {
		return failed(result, err)
	}
	result.Variant = "containers-storage"
	if _, current := annotations[manifestChecksumAnnotation]; !current && annotations[legacyManifestChecksumAnnotation] != "" {
		result.Variant = "stargz"
	}
	file, blob, err := openSection(blobPath)
	if err != nil {
		return failed(result, err)
	}
	defer file.Close()
	blobDigester := digest.Canonical.Digester()
	if _, err := io.Copy(blobDigester.Hash(), io.NewSectionReader(blob, 0, blob.Size())); err != nil {
		return failed(result, err)
	}
	result.Digest, result.Size = blobDigester.Digest().String(), int64Ptr(blob.Size())
	if result.Variant == "stargz" {
		if err := checkLegacyFooterAgreesWithAnnotations(blob, annotations); err != nil {
			return failed(result, err)
		}
		result.Checks = append(result.Checks, "40-byte footer (last skippable frame) agrees with the io.containers position annotation")
		annotations, err = currentKeysFromLegacy(blob, annotations)
		if err != nil {
			return failed(result, err)
		}
	}
	result.TOCDigest = annotations[manifestChecksumAnnotation]
	if result.TOCDigest == "" {
		return failed(result, fmt.Errorf("annotation %s is missing", manifestChecksumAnnotation))
	}

	if result.Variant == "containers-storage" {
		if err := checkFooterAgreesWithAnnotations(blob, annotations); err != nil {
			return failed(result, err)
		}
		result.Checks = append(result.Checks, "footer (last skippable frame) agrees with the position annotations")
	}

	scratch, err := os.MkdirTemp("", "accel-conformance-zstdchunked-")
	if err != nil {
		return failed(result, err)
	}
	defer os.RemoveAll(scratch)
	if result.Variant == "stargz" {
		// Recorded, not a failure: what today's podman does with the layer as annotated.
		if err := openWithCurrentDiffer(filepath.Join(scratch, "as-annotated"), blob, blobDigester.Digest(), originalAnnotations(annotationsPath)); err != nil {
			result.Warnings = append(result.Warnings, "containers/storage with the layer's own annotations: "+err.Error())
		}
	}
	applied, err := applyWithReferenceDiffer(scratch, blob, blobDigester.Digest(), annotations)
	if err != nil {
		return failed(result, err)
	}
	result.LazyReads = append(result.LazyReads, applied.lazy)
	result.Checks = append(result.Checks,
		"chunked.NewDiffer: manifest checksum, tar-split digest and TOC/tar-split consistency",
		"ApplyDiff: every regular file extracted from its TOC ranges matches its TOC digest",
		"ApplyDiff: uncompressed digest recomputed from tar-split and extracted files")

	tree, filesVerified, chunksVerified, err := treeFromAppliedLayer(applied)
	result.FilesVerified, result.ChunksVerified = intPtr(filesVerified), intPtr(chunksVerified)
	if err != nil {
		return failed(result, err)
	}
	result.Tree = tree
	result.Checks = append(result.Checks, "every TOC chunk digest matches the extracted content")

	decoder, err := zstd.NewReader(io.NewSectionReader(blob, 0, blob.Size()))
	if err != nil {
		return failed(result, err)
	}
	defer decoder.Close()
	streamTree, diffID, size, err := digestedTarTree(decoder, tarTreeOptions{})
	if err != nil {
		return failed(result, err)
	}
	result.DiffID, result.UncompressedSize = diffID.String(), int64Ptr(size)
	if diffID != applied.uncompressedDigest || size != applied.uncompressedSize {
		return failed(result, fmt.Errorf("zstd-decompressed blob (%s, %d bytes) differs from the tar the differ rebuilt from tar-split (%s, %d bytes)",
			diffID, size, applied.uncompressedDigest, applied.uncompressedSize))
	}
	result.Checks = append(result.Checks, "zstd-decompressed blob equals the tar rebuilt from tar-split and extracted files")
	if expectedDiffID != "" {
		if diffID.String() != expectedDiffID {
			return failed(result, fmt.Errorf("zstd-decompressed blob digest %s does not match --diff-id %s", diffID, expectedDiffID))
		}
		result.Checks = append(result.Checks, "zstd-decompressed blob digest equals --diff-id")
	}
	if difference := diffTrees("TOC", tree, "tar stream", streamTree); difference != "" {
		return failed(result, fmt.Errorf("TOC view differs from the decompressed tar: %s", difference))
	}
	result.Checks = append(result.Checks, "TOC view of the files equals the decompressed tar")

	stargzRead, stargzSums, files, chunks, err := stargzLazyRead(blob, originalAnnotations(annotationsPath), lazyFile)
	if result.Variant == "containers-storage" {
		// Recorded, not a failure: this variant is not written for stargz-snapshotter.
		if err != nil {
			result.Warnings = append(result.Warnings, "stargz-snapshotter's reader: "+err.Error())
		}
		result.OK = true
		return result
	}
	if err != nil {
		return failed(result, err)
	}
	result.LazyReads = append(result.LazyReads, stargzRead)
	result.Checks = append(result.Checks,
		"estargz.Open + zstdchunked.Decompressor read footer and TOC by range; VerifyTOC with the stargz TOC digest",
		fmt.Sprintf("stargz reader: %d files, %d chunks, each accepted by its chunk verifier", files, chunks))
	for _, e := range tree {
		if e.Type == "reg" && e.Sha256 != nil && stargzSums[cleanName(e.Name)] != *e.Sha256 {
			return failed(result, fmt.Errorf("%q: the stargz reader reads sha256:%s, the containers/storage differ extracted sha256:%s",
				e.Name, stargzSums[cleanName(e.Name)], *e.Sha256))
		}
	}
	result.Checks = append(result.Checks, "stargz reader and containers/storage differ read the same content for every file")
	result.OK = true
	return result
}

// originalAnnotations re-reads the annotations file (the differ was given a mapped copy).
func originalAnnotations(annotationsPath string) map[string]string {
	annotations, _ := readAnnotations(annotationsPath) // read once already
	return annotations
}

// checkLegacyFooterAgreesWithAnnotations reads the 40-byte footer stargz-snapshotter reads.
func checkLegacyFooterAgreesWithAnnotations(blob *io.SectionReader, annotations map[string]string) error {
	frameSize := int64(skippableFrameHeaderSize + legacyFooterSize)
	if blob.Size() < frameSize {
		return errors.New("blob too small for a 40-byte zstd:chunked footer")
	}
	frame := make([]byte, frameSize)
	if _, err := blob.ReadAt(frame, blob.Size()-frameSize); err != nil {
		return fmt.Errorf("reading footer: %w", err)
	}
	if !bytes.Equal(frame[:4], skippableFrameMagic) || binary.LittleEndian.Uint32(frame[4:8]) != legacyFooterSize {
		return errors.New("blob does not end with a 40-byte zstd skippable frame (footer)")
	}
	footer := frame[skippableFrameHeaderSize:]
	field := func(i int) uint64 { return binary.LittleEndian.Uint64(footer[8*i:]) }
	if !bytes.Equal(footer[32:40], legacyZstdChunkedMagic) {
		return fmt.Errorf("footer magic is %q, want %q", footer[32:40], legacyZstdChunkedMagic)
	}
	manifestPosition := fmt.Sprintf("%d:%d:%d:%d", field(0), field(1), field(2), field(3))
	if got := annotations[legacyManifestPositionAnnotation]; got != manifestPosition {
		return fmt.Errorf("annotation %s is %q but the footer says %q", legacyManifestPositionAnnotation, got, manifestPosition)
	}
	return nil
}

// currentKeysFromLegacy gives the differ the older keys' values under the current keys, and the
// tar-split's position (the skippable frame between the TOC's and the footer's), which the TOC's
// tarSplitDigest makes the library require.
func currentKeysFromLegacy(blob *io.SectionReader, legacy map[string]string) (map[string]string, error) {
	var offset, length, uncompressed, manifestType uint64
	if _, err := fmt.Sscanf(legacy[legacyManifestPositionAnnotation], "%d:%d:%d:%d", &offset, &length, &uncompressed, &manifestType); err != nil {
		return nil, fmt.Errorf("annotation %s: %w", legacyManifestPositionAnnotation, err)
	}
	tarSplitOffset := int64(offset+length) + skippableFrameHeaderSize
	tarSplitLength := blob.Size() - skippableFrameHeaderSize - legacyFooterSize - tarSplitOffset
	header := make([]byte, skippableFrameHeaderSize)
	if tarSplitLength <= 0 {
		return nil, errors.New("no tar-split frame between the TOC and the footer")
	}
	if _, err := blob.ReadAt(header, tarSplitOffset-skippableFrameHeaderSize); err != nil {
		return nil, err
	}
	if !bytes.Equal(header[:4], skippableFrameMagic) || int64(binary.LittleEndian.Uint32(header[4:8])) != tarSplitLength {
		return nil, errors.New("the bytes between the TOC and the footer are not one skippable frame (tar-split)")
	}
	decoder, err := zstd.NewReader(io.NewSectionReader(blob, tarSplitOffset, tarSplitLength))
	if err != nil {
		return nil, err
	}
	defer decoder.Close()
	tarSplitUncompressed, err := io.Copy(io.Discard, decoder)
	if err != nil {
		return nil, fmt.Errorf("tar-split frame: %w", err)
	}
	return map[string]string{
		manifestChecksumAnnotation: legacy[legacyManifestChecksumAnnotation],
		manifestPositionAnnotation: legacy[legacyManifestPositionAnnotation],
		tarSplitPositionAnnotation: fmt.Sprintf("%d:%d:%d", tarSplitOffset, tarSplitLength, tarSplitUncompressed),
	}, nil
}

func readAnnotations(annotationsPath string) (map[string]string, error) {
	data, err := os.ReadFile(annotationsPath)
	if err != nil {
		return nil, err
	}
	var annotations map[string]string
	if err := json.Unmarshal(data, &annotations); err != nil {
		return nil, fmt.Errorf("annotations file: %w", err)
	}
	return annotations, nil
}

// checkFooterAgreesWithAnnotations reads the self-describing footer. The library never reads it
// (it trusts the annotations), but other readers such as the Python side may.
func checkFooterAgreesWithAnnotations(blob *io.SectionReader, annotations map[string]string) error {
	frameSize := int64(skippableFrameHeaderSize + footerSize)
	if blob.Size() < frameSize {
		return errors.New("blob too small for a zstd:chunked footer")
	}
	frame := make([]byte, frameSize)
	if _, err := blob.ReadAt(frame, blob.Size()-frameSize); err != nil {
		return fmt.Errorf("reading footer: %w", err)
	}
	if !bytes.Equal(frame[:4], skippableFrameMagic) || binary.LittleEndian.Uint32(frame[4:8]) != footerSize {
		return errors.New("blob does not end with a 64-byte zstd skippable frame (footer)")
	}
	footer := frame[skippableFrameHeaderSize:]
	field := func(i int) uint64 { return binary.LittleEndian.Uint64(footer[8*i:]) }
	if !bytes.Equal(footer[56:64], zstdChunkedMagic) {
		return fmt.Errorf("footer magic is %q, want %q", footer[56:64], zstdChunkedMagic)
	}
	if field(3) != manifestTypeCRFS {
		return fmt.Errorf("footer manifest type %d, want %d", field(3), manifestTypeCRFS)
	}
	manifestPosition := fmt.Sprintf("%d:%d:%d:%d", field(0), field(1), field(2), field(3))
	if got := annotations[manifestPositionAnnotation]; got != manifestPosition {
		return fmt.Errorf("annotation %s is %q but the footer says %q", manifestPositionAnnotation, got, manifestPosition)
	}
	tarSplitPosition := fmt.Sprintf("%d:%d:%d", field(4), field(5), field(6))
	if got, present := annotations[tarSplitPositionAnnotation]; present && got != tarSplitPosition {
		return fmt.Errorf("annotation %s is %q but the footer says %q", tarSplitPositionAnnotation, got, tarSplitPosition)
	}
	return nil
}

// appliedLayer is what the reference differ produced.
type appliedLayer struct {
	root               string
	toc                tocDocument
	namesByPath        map[string][2]string // normalised name -> uname, gname from the tar-split headers
	uncompressedDigest digest.Digest
	uncompressedSize   int64
	lazy               LazyRead
}

// openWithCurrentDiffer only creates the differ (which reads the TOC), in a store of its own.
func openWithCurrentDiffer(scratch string, blob *io.SectionReader, blobDigest digest.Digest, annotations map[string]string) error {
	store, err := scratchStore(scratch)
	if err != nil {
		return err
	}
	defer func() { _, _ = store.Shutdown(true) }()
	differ, err := chunked.NewDiffer(context.Background(), &partialPullStore{Store: store}, blobDigest, blob.Size(), annotations, fileSource{blob: blob, counts: &rangeCounts{}})
	if err != nil {
		return fmt.Errorf("chunked.NewDiffer: %w", err)
	}
	differ.Close()
	return nil
}

func scratchStore(scratch string) (storage.Store, error) {
	store, err := storage.GetStore(types.StoreOptions{
		RunRoot:         filepath.Join(scratch, "run"),
		GraphRoot:       filepath.Join(scratch, "graph"),
		GraphDriverName: "vfs",
		PullOptions:     map[string]string{"enable_partial_images": "true"},
	})
	if err != nil {
		return nil, fmt.Errorf("creating scratch storage: %w", err)
	}
	return store, nil
}

func applyWithReferenceDiffer(scratch string, blob *io.SectionReader, blobDigest digest.Digest, annotations map[string]string) (*appliedLayer, error) {
	store, err := scratchStore(scratch)
	if err != nil {
		return nil, err
	}
	defer func() { _, _ = store.Shutdown(true) }()

	source := fileSource{blob: blob, counts: &rangeCounts{}}
	differ, err := chunked.NewDiffer(context.Background(), &partialPullStore{Store: store}, blobDigest, blob.Size(), annotations, source)
	if err != nil {
		return nil, fmt.Errorf("chunked.NewDiffer: %w", err)
	}
	// NewDiffer fetched the TOC and tar-split; ApplyDiff fetches the files' ranges (all of them
	// here: a scratch store has no local copy of any file to reuse).
	lazy := LazyRead{Reader: zstdChunkedLibrary, BlobBytes: blob.Size(), TOCBytes: source.counts.bytes.Load(), File: "*"}
	defer differ.Close()
	root := filepath.Join(scratch, "layer")
	if err := os.Mkdir(root, 0o755); err != nil {
		return nil, err
	}
	// Unprivileged runs cannot chown; ownership is checked through the TOC anyway.
	options := &archive.TarOptions{IgnoreChownErrors: os.Geteuid() != 0}
	output, err := differ.ApplyDiff(root, options, &graphdriver.DifferOptions{})
	if output.TarSplit != nil {
		defer output.TarSplit.Close() // ownership passes to the caller of ApplyDiff
	}
	if err != nil {
		return nil, fmt.Errorf("ApplyDiff: %w", err)
	}
	if output.UncompressedDigest == "" || output.TarSplit == nil {
		return nil, errors.New("differ produced no uncompressed digest / tar-split (layer without tar-split?)")
	}
	lazy.FileBytes = source.counts.bytes.Load() - lazy.TOCBytes
	lazy.Ranges = int(source.counts.ranges.Load())
	applied := &appliedLayer{
		lazy:               lazy,
		root:               root,
		namesByPath:        map[string][2]string{},
		uncompressedDigest: output.UncompressedDigest,
		uncompressedSize:   output.Size,
	}
	manifest, ok := output.BigData[manifestBigDataKey]
	if !ok {
		return nil, fmt.Errorf("differ output has no %q", manifestBigDataKey)
	}
	if err := json.Unmarshal(manifest, &applied.toc); err != nil {
		return nil, fmt.Errorf("decoding the verified TOC: %w", err)
	}
	// The TOC has no user/group names; the tar-split (already checked against the TOC by the
	// library) holds the headers a full pull would write.
	if _, err := output.TarSplit.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	err = asm.IterateHeaders(tarsplitstorage.NewJSONUnpacker(output.TarSplit), func(header *tarsplittar.Header) error {
		applied.namesByPath[cleanName(header.Name)] = [2]string{header.Uname, header.Gname}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading tar-split headers: %w", err)
	}
	return applied, nil
}

// treeFromAppliedLayer builds the tree from the verified TOC, hashing regular files as the differ
// extracted them and checking every chunk digest against the extracted bytes.
func treeFromAppliedLayer(applied *appliedLayer) ([]TreeEntry, int, int, error) {
	var tree []TreeEntry
	filesVerified, chunksVerified := 0, 0
	entries := applied.toc.Entries
	for i := 0; i < len(entries); i++ {
		e := entries[i]
		if e.Type == "chunk" {
			return nil, filesVerified, chunksVerified, fmt.Errorf("TOC chunk entry %d follows no regular file", i)
		}
		name := cleanName(e.Name)
		names := applied.namesByPath[name]
		attrs := entryAttributes{
			name: e.Name, typ: e.Type, linkname: e.Linkname, mode: e.Mode, uid: e.UID, gid: e.GID,
			uname: names[0], gname: names[1], size: e.Size, devmajor: e.Devmajor, devminor: e.Devminor,
			xattrsBase64: e.Xattrs,
		}
		if e.Type == "reg" {
			chunks := []tocEntry{e}
			for i+1 < len(entries) && entries[i+1].Type == "chunk" {
				i++
				chunks = append(chunks, entries[i])
			}
			sum, err := verifyExtractedFile(filepath.Join(applied.root, filepath.FromSlash(name)), e, chunks)
			if err != nil {
				return nil, filesVerified, chunksVerified, err
			}
			attrs.sha256Hex = sum
			filesVerified++
			if e.Size > 0 {
				chunksVerified += len(chunks)
			}
		}
		tree = append(tree, newTreeEntry(attrs))
	}
	return sortedTree(tree), filesVerified, chunksVerified, nil
}

func verifyExtractedFile(extractedPath string, file tocEntry, chunks []tocEntry) (string, error) {
	content, err := os.Open(extractedPath)
	if err != nil {
		return "", fmt.Errorf("extracted %q: %w", file.Name, err)
	}
	defer content.Close()
	info, err := content.Stat()
	if err != nil {
		return "", err
	}
	if info.Size() != file.Size {
		return "", fmt.Errorf("%q: extracted %d bytes, TOC says %d", file.Name, info.Size(), file.Size)
	}
	whole := sha256.New()
	if file.Size > 0 {
		next := int64(0)
		for index, chunk := range chunks {
			length := chunk.ChunkSize
			if length == 0 { // a single-chunk file may leave chunkSize out
				length = file.Size - chunk.ChunkOffset
			}
			if chunk.ChunkOffset != next || length <= 0 || chunk.ChunkOffset+length > file.Size {
				return "", fmt.Errorf("%q: chunk %d covers [%d, +%d), expected to start at %d", file.Name, index, chunk.ChunkOffset, length, next)
			}
			chunkHash := sha256.New()
			if _, err := io.Copy(io.MultiWriter(chunkHash, whole), io.NewSectionReader(content, chunk.ChunkOffset, length)); err != nil {
				return "", err
			}
			if chunk.ChunkDigest == "" {
				// The writer leaves the digest out of single-chunk files: the file digest covers it.
				if len(chunks) > 1 {
					return "", fmt.Errorf("%q: chunk %d of %d has no chunkDigest", file.Name, index, len(chunks))
				}
			} else if got := "sha256:" + hex.EncodeToString(chunkHash.Sum(nil)); got != chunk.ChunkDigest {
				return "", fmt.Errorf("%q: chunk %d at offset %d is %s, TOC chunkDigest %s", file.Name, index, chunk.ChunkOffset, got, chunk.ChunkDigest)
			}
			next = chunk.ChunkOffset + length
		}
		if next != file.Size {
			return "", fmt.Errorf("%q: chunks cover %d of %d bytes", file.Name, next, file.Size)
		}
	}
	sum := hex.EncodeToString(whole.Sum(nil))
	if file.Size > 0 && file.Digest == "" {
		return "", fmt.Errorf("%q: TOC entry has no digest", file.Name)
	}
	if file.Digest != "" && file.Digest != "sha256:"+sum {
		return "", fmt.Errorf("%q: extracted content sha256:%s, TOC digest %s", file.Name, sum, file.Digest)
	}
	return sum, nil
}

// partialPullStore is a vfs store that admits to supporting partial pulls. chunked.NewDiffer only
// asks the graph driver whether it can take a differ's output (vfs cannot, overlay can but needs
// mounts); the differ's own reading and verification (ApplyDiff into a directory of ours) does not
// involve the driver at all.
type partialPullStore struct{ storage.Store }

func (s *partialPullStore) GraphDriver() (graphdriver.Driver, error) {
	driver, err := s.Store.GraphDriver()
	if err != nil {
		return nil, err
	}
	return differCapableDriver{driver}, nil
}

type differCapableDriver struct{ graphdriver.Driver }

var errNotStaging = errors.New("accel-conformance applies the differ itself; driver staging is not used")

func (differCapableDriver) ApplyDiffWithDiffer(*graphdriver.ApplyDiffWithDifferOpts, graphdriver.Differ) (graphdriver.DriverWithDifferOutput, error) {
	return graphdriver.DriverWithDifferOutput{}, errNotStaging
}

func (differCapableDriver) ApplyDiffFromStagingDirectory(string, string, *graphdriver.DriverWithDifferOutput, *graphdriver.ApplyDiffWithDifferOpts) error {
	return errNotStaging
}

func (differCapableDriver) CleanupStagingDirectory(string) error { return errNotStaging }

func (differCapableDriver) DifferTarget(string) (string, error) { return "", errNotStaging }

// fileSource serves byte ranges of the local blob as a registry would serve HTTP range requests.
type fileSource struct {
	blob   *io.SectionReader
	counts *rangeCounts
}

type rangeCounts struct{ bytes, ranges atomic.Int64 }

func (f fileSource) GetBlobAt(chunks []chunked.ImageSourceChunk) (chan io.ReadCloser, chan error, error) {
	for _, chunk := range chunks {
		if chunk.Offset+chunk.Length > uint64(f.blob.Size()) || chunk.Offset+chunk.Length < chunk.Offset {
			return nil, nil, fmt.Errorf("range %d+%d is outside the %d-byte blob", chunk.Offset, chunk.Length, f.blob.Size())
		}
	}
	streams := make(chan io.ReadCloser)
	errs := make(chan error)
	go func() {
		for _, chunk := range chunks {
			f.counts.bytes.Add(int64(chunk.Length))
			f.counts.ranges.Add(1)
			streams <- io.NopCloser(io.NewSectionReader(f.blob, int64(chunk.Offset), int64(chunk.Length)))
		}
		close(streams)
		close(errs)
	}()
	return streams, errs, nil
}

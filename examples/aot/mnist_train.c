/* Train the MNIST MLP of examples/aot/mlp.py for one epoch through libmlp.so, from plain C, and
   print the test accuracy: no Python involved. `make aot-demo` builds and runs it:

       drug-compile examples/aot/mlp.py --out build/aot
       cc -O2 examples/aot/mnist_train.c -Ibuild/aot -Lbuild/aot -lmlp -lopenblas -lz -o build/aot/mnist_train
       build/aot/mnist_train drug/data/mnist [checkpoint.npz]

   Same recipe as `make demo`: batch 128, Adam with peak learning rate 3e-3 decayed linearly to 0,
   shuffled with a fixed seed. The optional checkpoint is written with drug_mlp_save and loads in
   Python with train.load(). */
#define _POSIX_C_SOURCE 200809L
#include <cblas.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>

#include "mlp.h"

#define BATCH 128
#define PEAK_LR 3e-3f
#define PIXELS 784
#define CLASSES 10

/* The payload of a gzipped IDX file (big-endian header: magic 0x0000 08 <rank>, then the dims). */
static unsigned char *read_idx(const char *dir, const char *file, int rank, int32_t *dims) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    gzFile f = gzopen(path, "rb");
    unsigned char header[16];
    if (!f || gzread(f, header, 4 + 4 * rank) != 4 + 4 * rank || header[2] != 0x08 || header[3] != rank) {
        fprintf(stderr, "cannot read IDX file %s\n", path);
        exit(1);
    }
    size_t n = 1;
    for (int i = 0; i < rank; i++) {
        const unsigned char *p = header + 4 + 4 * i;
        dims[i] = (int32_t)((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]);
        n *= (size_t)dims[i];
    }
    unsigned char *data = malloc(n);
    if (!data || gzread(f, data, (unsigned)n) != (int)n) {
        fprintf(stderr, "%s is truncated\n", path);
        exit(1);
    }
    gzclose(f);
    return data;
}

static void load_split(const char *dir, const char *images_file, const char *labels_file, float **x, int32_t **y,
                       int32_t *count) {
    int32_t image_dims[3], label_dims[1];
    unsigned char *images = read_idx(dir, images_file, 3, image_dims);
    unsigned char *labels = read_idx(dir, labels_file, 1, label_dims);
    *count = label_dims[0];
    *x = malloc((size_t)*count * PIXELS * sizeof **x);
    *y = malloc((size_t)*count * sizeof **y);
    for (size_t i = 0; i < (size_t)*count * PIXELS; i++) (*x)[i] = images[i] / 255.0f;
    for (int32_t i = 0; i < *count; i++) (*y)[i] = labels[i];
    free(images);
    free(labels);
}

static uint64_t next_random(uint64_t *state) { /* splitmix64 */
    uint64_t z = (*state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static void check(int status, drug_mlp *h, const char *what) {
    if (status != DRUG_OK) {
        fprintf(stderr, "%s failed (%d): %s\n", what, status, drug_mlp_last_error(h));
        exit(1);
    }
}

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static double accuracy(drug_mlp *h, const float *x, const int32_t *y, int32_t count) {
    float logits[1000 * CLASSES];
    int32_t correct = 0;
    for (int32_t start = 0; start < count; start += 1000) {
        int32_t n = count - start < 1000 ? count - start : 1000;
        check(drug_mlp_predict(h, x + (size_t)start * PIXELS, n, logits), h, "drug_mlp_predict");
        for (int32_t i = 0; i < n; i++) {
            int best = 0;
            for (int c = 1; c < CLASSES; c++)
                if (logits[i * CLASSES + c] > logits[i * CLASSES + best]) best = c;
            correct += best == y[start + i];
        }
    }
    return (double)correct / count;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MNIST_DIR [CHECKPOINT.npz]\n", argv[0]);
        return 2;
    }
    float *x_train, *x_test, *xb = malloc(BATCH * PIXELS * sizeof *xb);
    int32_t *y_train, *y_test, yb[BATCH], n_train, n_test;
    load_split(argv[1], "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", &x_train, &y_train, &n_train);
    load_split(argv[1], "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", &x_test, &y_test, &n_test);

    drug_mlp *h = drug_mlp_create((drug_mlp_sgemm_fn)cblas_sgemm);
    if (!h) {
        fprintf(stderr, "drug_mlp_create: %s\n", drug_mlp_last_error(NULL));
        return 1;
    }
    int32_t *order = malloc((size_t)n_train * sizeof *order);
    for (int32_t i = 0; i < n_train; i++) order[i] = i;
    uint64_t rng = 0;
    for (int32_t i = n_train - 1; i > 0; i--) { /* Fisher-Yates */
        int32_t j = (int32_t)(next_random(&rng) % (uint64_t)(i + 1)), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    int32_t steps = (n_train + BATCH - 1) / BATCH;
    double loss_sum = 0, start = seconds();
    for (int32_t step = 0; step < steps; step++) {
        int32_t first = step * BATCH, n = n_train - first < BATCH ? n_train - first : BATCH;
        for (int32_t i = 0; i < n; i++) {
            memcpy(xb + (size_t)i * PIXELS, x_train + (size_t)order[first + i] * PIXELS, PIXELS * sizeof *xb);
            yb[i] = y_train[order[first + i]];
        }
        float loss;
        check(drug_mlp_set_lr(h, PEAK_LR * (1.0f - (float)step / (float)steps)), h, "drug_mlp_set_lr");
        check(drug_mlp_train_step(h, xb, yb, n, &loss), h, "drug_mlp_train_step");
        loss_sum += loss;
    }
    double train_seconds = seconds() - start;
    double acc = accuracy(h, x_test, y_test, n_test);
    printf("epoch 1: mean loss %.4f, %d steps in %.2f s (%.2f ms/step)\n", loss_sum / steps, steps, train_seconds,
           1e3 * train_seconds / steps);
    printf("summary: test accuracy %.4f after 1 epoch, from C through libmlp.so\n", acc);
    if (argc > 2) {
        check(drug_mlp_save(h, argv[2]), h, "drug_mlp_save");
        printf("saved %s (step %lld)\n", argv[2], (long long)drug_mlp_step_count(h));
    }
    drug_mlp_destroy(h);
    free(order);
    free(xb);
    free(x_train);
    free(y_train);
    free(x_test);
    free(y_test);
    return 0;
}

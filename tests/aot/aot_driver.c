/* A C program driving a drug-compile library for tests/test_aot.py. The model is chosen at build
   time: -DMODEL=mlp -DMODEL_HEADER='"mlp.h"' -DX_SIZE=... -DOUT_SIZE=... -DTRAIN_BATCH=...
   -DPREDICT_BATCH=... -DSTEPS=...; every model has inputs x (float32) and y (int32 labels) and one
   float32 output. DATA holds STEPS batches of (x, y), then PREDICT_BATCH rows of x.

     driver train DATA OUT CKPT   STEPS train steps, predict, save CKPT;
                                  OUT = losses, predictions, every parameter (param_info order)
     driver load CKPT DATA OUT    load CKPT, predict; OUT = predictions, parameters, step (int64), lr
     driver errors DATA DAMAGED TRUNCATED FOREIGN   bad calls: one "<check> <status> <message>" line each */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include MODEL_HEADER

#define CAT_(a, b, c) a##b##c
#define CAT(a, b, c) CAT_(a, b, c)
#define API(suffix) CAT(drug_, MODEL, suffix) /* API(_create) is drug_<model>_create */
typedef API() handle;

static unsigned char *read_file(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    *size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *data = malloc(*size + 1);
    if (fread(data, 1, *size, f) != *size) exit(1);
    fclose(f);
    return data;
}

static void must(int status, handle *h, const char *what) {
    if (status != DRUG_OK) {
        fprintf(stderr, "%s: status %d: %s\n", what, status, API(_last_error)(h));
        exit(1);
    }
}

static const float *train_x(const unsigned char *data, int step) {
    return (const float *)(data + (size_t)step * TRAIN_BATCH * (X_SIZE * 4 + 4));
}

static const int32_t *train_y(const unsigned char *data, int step) {
    return (const int32_t *)(train_x(data, step) + TRAIN_BATCH * X_SIZE);
}

static const float *predict_x(const unsigned char *data) { return train_x(data, STEPS); }

static void write_params(handle *h, FILE *out) {
    for (int64_t i = 0; i < API(_param_count)(); i++) {
        const drug_tensor_info *info = API(_param_info)(i);
        float *values = malloc((size_t)info->size * sizeof *values);
        must(API(_get_param)(h, info->name, values, info->size), h, "get_param");
        fwrite(values, sizeof *values, (size_t)info->size, out);
        free(values);
    }
}

static void write_predictions(handle *h, const unsigned char *data, FILE *out) {
    static float predictions[PREDICT_BATCH * OUT_SIZE];
    must(API(_predict)(h, predict_x(data), PREDICT_BATCH, predictions), h, "predict");
    fwrite(predictions, sizeof *predictions, PREDICT_BATCH * OUT_SIZE, out);
}

#define REPORT(check, call)                                                         \
    do {                                                                            \
        int status_ = (call);                                                       \
        printf("%s %d %s\n", check, status_, API(_last_error)(h));                 \
    } while (0)

static int errors(handle *h, const unsigned char *data, char **paths) {
    static float predictions[PREDICT_BATCH * OUT_SIZE];
    const float *x = train_x(data, 0);
    const int32_t *y = train_y(data, 0);
    float loss, lr;
    REPORT("batch_zero", API(_train_step)(h, x, y, 0, &loss));
    REPORT("batch_negative", API(_predict)(h, x, -5, predictions));
    REPORT("batch_over_max", API(_train_step)(h, x, y, API(_max_batch)() + 1, &loss));
    REPORT("null_input", API(_train_step)(h, NULL, y, TRAIN_BATCH, &loss));
    REPORT("null_output", API(_predict)(h, x, PREDICT_BATCH, NULL));
    REPORT("good_call_clears_message", API(_predict)(h, predict_x(data), PREDICT_BATCH, predictions));
    REPORT("unknown_param", API(_get_param)(h, "no_such_param", predictions, 1));
    REPORT("null_param_name", API(_set_param)(h, NULL, predictions, 1));
    const drug_tensor_info *first = API(_param_info)(0);
    REPORT("wrong_count", API(_set_param)(h, first->name, predictions, first->size + 1));
    REPORT("null_values", API(_get_param)(h, first->name, NULL, first->size));
    REPORT("null_lr", API(_get_lr)(h, NULL));
    REPORT("missing_file", API(_load)(h, "/nonexistent/dir/ckpt.npz"));
    REPORT("damaged_file", API(_load)(h, paths[0]));
    REPORT("truncated_file", API(_load)(h, paths[1]));
    REPORT("foreign_checkpoint", API(_load)(h, paths[2]));
    REPORT("null_path", API(_save)(h, NULL));
    REPORT("unwritable_path", API(_save)(h, "/nonexistent/dir/ckpt.npz"));

    /* a label out of range stops the step before any update: parameters and step count stay */
    float *before = malloc((size_t)first->size * sizeof *before), *after = malloc((size_t)first->size * sizeof *after);
    int32_t *bad = malloc(TRAIN_BATCH * sizeof *bad);
    memcpy(bad, y, TRAIN_BATCH * sizeof *bad);
    bad[TRAIN_BATCH - 1] = 1000000;
    must(API(_get_param)(h, first->name, before, first->size), h, "get_param");
    REPORT("label_out_of_range", API(_train_step)(h, x, bad, TRAIN_BATCH, &loss));
    must(API(_get_param)(h, first->name, after, first->size), h, "get_param");
    printf("unchanged_after_bad_label %d %lld\n", memcmp(before, after, (size_t)first->size * 4) == 0,
           (long long)API(_step_count)(h));

    /* NULL handles and indices out of range never crash */
    printf("null_handle_step %d\n", API(_train_step)(NULL, x, y, TRAIN_BATCH, &loss));
    printf("null_handle_lr %d\n", API(_set_lr)(NULL, 0.1f));
    printf("null_handle_message %s\n", API(_last_error)(NULL));
    printf("null_handle_step_count %lld\n", (long long)API(_step_count)(NULL));
    printf("create_null_sgemm %d\n", API(_create)(NULL) == NULL);
    printf("param_info_out_of_range %d %d\n", API(_param_info)(-1) == NULL,
           API(_param_info)(API(_param_count)()) == NULL);
    printf("arena_bytes_out_of_range %lld\n", (long long)API(_arena_bytes)(0));
    API(_destroy)(NULL);
    must(API(_get_lr)(h, &lr), h, "get_lr");
    printf("lr %.9g\n", lr);
    free(before);
    free(after);
    free(bad);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    handle *h = API(_create)((API(_sgemm_fn))cblas_sgemm);
    if (!h) return 1;
    size_t size;
    int status = 0;
    if (!strcmp(argv[1], "train") && argc == 5) {
        unsigned char *data = read_file(argv[2], &size);
        FILE *out = fopen(argv[3], "wb");
        for (int step = 0; step < STEPS; step++) {
            float loss;
            must(API(_train_step)(h, train_x(data, step), train_y(data, step), TRAIN_BATCH, &loss), h, "train_step");
            fwrite(&loss, sizeof loss, 1, out);
        }
        write_predictions(h, data, out);
        write_params(h, out);
        must(API(_save)(h, argv[4]), h, "save");
        fclose(out);
        free(data);
    } else if (!strcmp(argv[1], "load") && argc == 5) {
        unsigned char *data = read_file(argv[3], &size);
        FILE *out = fopen(argv[4], "wb");
        float lr;
        must(API(_load)(h, argv[2]), h, "load");
        write_predictions(h, data, out);
        write_params(h, out);
        int64_t steps = API(_step_count)(h);
        must(API(_get_lr)(h, &lr), h, "get_lr");
        fwrite(&steps, sizeof steps, 1, out);
        fwrite(&lr, sizeof lr, 1, out);
        fclose(out);
        free(data);
    } else if (!strcmp(argv[1], "errors") && argc == 6) {
        unsigned char *data = read_file(argv[2], &size);
        status = errors(h, data, argv + 3);
        free(data);
    } else {
        status = 2;
    }
    API(_destroy)(h);
    return status;
}

using System.Globalization;

namespace LoraKernels.Demo.Plotting;

/// <summary>
/// Renders a loss curve: loss on a log10 axis against the step, with axes, grid lines at the
/// ticks, tick labels and a title drawn with <see cref="BitmapFont"/>; or several curves, one colour
/// each, with a legend (the variant comparison).
/// </summary>
public static class LossCurvePlot
{
    private static readonly (byte, byte, byte) Background = (255, 255, 255);
    private static readonly (byte, byte, byte) Ink = (30, 30, 30);
    private static readonly (byte, byte, byte) Grid = (225, 225, 225);
    private static readonly (byte, byte, byte) Curve = (31, 119, 180);
    // Further series: the rest of matplotlib's tab10 cycle (Curve is its first colour).
    private static readonly (byte, byte, byte)[] Palette =
    [
        Curve, (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
        (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    ];

    private const int Width = 800, Height = 500;
    private const int Left = 90, Right = 30, Top = 50, Bottom = 60;
    private const int TextScale = 2;

    /// <param name="losses">Loss per step; step i + 1 is losses[i]. Every value must be positive and finite.</param>
    public static RgbImage Render(IReadOnlyList<float> losses, string title) => Render([("", losses)], title, legend: false);

    /// <summary>One curve per series (at most ten, one colour each) and a legend naming them.</summary>
    public static RgbImage Render(IReadOnlyList<(string Name, IReadOnlyList<float> Losses)> series, string title)
    {
        if (series.Count > Palette.Length) throw new ArgumentException($"at most {Palette.Length} series, got {series.Count}", nameof(series));
        return Render(series, title, legend: true);
    }

    private static RgbImage Render(IReadOnlyList<(string Name, IReadOnlyList<float> Losses)> series, string title, bool legend)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(series.Count, 1, nameof(series));
        foreach (var (_, losses) in series)
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(losses.Count, 1, nameof(losses));
            foreach (float loss in losses)
                if (!(loss > 0f) || !float.IsFinite(loss))
                    throw new ArgumentException($"every loss must be positive and finite to plot on a log axis; got {loss}", nameof(losses));
        }

        var image = new RgbImage(Width, Height, Background);
        int plotWidth = Width - Left - Right, plotHeight = Height - Top - Bottom;

        double minLog = Math.Log10(series.Min(s => s.Losses.Min())), maxLog = Math.Log10(series.Max(s => s.Losses.Max()));
        double bottomLog = Math.Floor(minLog), topLog = Math.Ceiling(maxLog);
        if (topLog - bottomLog < 1) topLog = bottomLog + 1;
        int lastStep = Math.Max(series.Max(s => s.Losses.Count), 2);

        int ToX(double step) => Left + (int)Math.Round((step - 1) / (lastStep - 1) * plotWidth);
        int ToY(double log) => Top + plotHeight - (int)Math.Round((log - bottomLog) / (topLog - bottomLog) * plotHeight);

        // Y ticks: every decade, plus 2× and 5× when the range spans at most two decades.
        bool fineTicks = topLog - bottomLog <= 2;
        for (double decade = bottomLog; decade <= topLog; decade++)
        {
            foreach (double multiple in fineTicks ? new[] { 1.0, 2.0, 5.0 } : [1.0])
            {
                double log = decade + Math.Log10(multiple);
                if (log > topLog + 1e-9) continue;
                int y = ToY(log);
                image.DrawLine(Left, y, Left + plotWidth, y, Grid);
                image.DrawLine(Left - 6, y, Left, y, Ink);
                string label = FormatPowerOfTen(multiple, (int)decade);
                BitmapFont.Draw(image, label, Left - 10 - BitmapFont.MeasureWidth(label, TextScale),
                                y - BitmapFont.MeasureHeight(TextScale) / 2, Ink, TextScale);
            }
        }

        // X ticks: a 1-2-5 spacing giving at most about eight ticks.
        int spacing = NiceSpacing(lastStep - 1, maxTicks: 8);
        var xTicks = new SortedSet<int> { 1 };
        for (int step = spacing; step <= lastStep; step += spacing) xTicks.Add(step);
        foreach (int step in xTicks)
        {
            int x = ToX(step);
            image.DrawLine(x, Top, x, Top + plotHeight, Grid);
            image.DrawLine(x, Top + plotHeight, x, Top + plotHeight + 6, Ink);
            string label = step.ToString(CultureInfo.InvariantCulture);
            BitmapFont.Draw(image, label, x - BitmapFont.MeasureWidth(label, TextScale) / 2, Top + plotHeight + 12, Ink, TextScale);
        }

        // Axes.
        image.DrawLine(Left, Top, Left, Top + plotHeight, Ink, thickness: 2);
        image.DrawLine(Left, Top + plotHeight, Left + plotWidth, Top + plotHeight, Ink, thickness: 2);

        // The curves.
        for (int s = 0; s < series.Count; s++)
        {
            IReadOnlyList<float> losses = series[s].Losses;
            var color = Palette[s];
            for (int i = 1; i < losses.Count; i++)
                image.DrawLine(ToX(i), ToY(Math.Log10(losses[i - 1])), ToX(i + 1), ToY(Math.Log10(losses[i])), color, thickness: 2);
            if (losses.Count == 1)
                image.FillRectangle(ToX(1) - 2, ToY(Math.Log10(losses[0])) - 2, 5, 5, color);
        }
        if (legend) DrawLegend(image, series, Left + plotWidth, Top);

        // Titles.
        BitmapFont.Draw(image, title, (Width - BitmapFont.MeasureWidth(title, TextScale)) / 2, 15, Ink, TextScale);
        const string xLabel = "step";
        BitmapFont.Draw(image, xLabel, Left + (plotWidth - BitmapFont.MeasureWidth(xLabel, TextScale)) / 2, Height - 22, Ink, TextScale);
        const string yLabel = "loss";
        BitmapFont.Draw(image, yLabel, 10, Top - 30, Ink, TextScale);
        return image;
    }

    /// <summary>A boxed legend (a colour swatch and the name per series) inside the plot's top-right corner.</summary>
    private static void DrawLegend(RgbImage image, IReadOnlyList<(string Name, IReadOnlyList<float> Losses)> series, int right, int top)
    {
        const int padding = 8, swatch = 18, gap = 6;
        int lineHeight = BitmapFont.MeasureHeight(TextScale) + 6;
        int textWidth = series.Max(s => BitmapFont.MeasureWidth(s.Name, TextScale));
        int boxWidth = padding + swatch + gap + textWidth + padding, boxHeight = padding * 2 + lineHeight * series.Count - 6;
        int x = right - boxWidth - 8, y = top + 8;
        image.FillRectangle(x, y, boxWidth, boxHeight, Background);
        image.DrawLine(x, y, x + boxWidth, y, Ink);
        image.DrawLine(x, y + boxHeight, x + boxWidth, y + boxHeight, Ink);
        image.DrawLine(x, y, x, y + boxHeight, Ink);
        image.DrawLine(x + boxWidth, y, x + boxWidth, y + boxHeight, Ink);
        for (int s = 0; s < series.Count; s++)
        {
            int rowY = y + padding + s * lineHeight;
            int middle = rowY + BitmapFont.MeasureHeight(TextScale) / 2;
            image.DrawLine(x + padding, middle, x + padding + swatch, middle, Palette[s], thickness: 3);
            BitmapFont.Draw(image, series[s].Name, x + padding + swatch + gap, rowY, Ink, TextScale);
        }
    }

    /// <summary>"1e-3", "2e-3", "5e-3" style labels (exact, no floating-point formatting noise).</summary>
    private static string FormatPowerOfTen(double multiple, int exponent) =>
        string.Create(CultureInfo.InvariantCulture, $"{(int)multiple}e{exponent}");

    private static int NiceSpacing(int range, int maxTicks)
    {
        if (range <= 0) return 1;
        for (int power = 1; ; power *= 10)
            foreach (int multiple in (ReadOnlySpan<int>)[1, 2, 5])
                if ((long)multiple * power * maxTicks >= range) return multiple * power;
    }
}
